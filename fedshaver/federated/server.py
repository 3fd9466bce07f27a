"""The phases of one federated run, driven from the ServerApp.

1. Setup (before any client runs): prepared dataset, client partitions, device tiers, budget checks.
2. Handshake: every client reports its partition id, its row counts and its feature counts.
3. Federated training: FedAvg rounds with central evaluation on the server's validation split.
4. Shaver, once, on the server: codebook from the clients' summed feature counts, Shapley values on the
   validation split, one ranking.
5. Devices: one variant per tier from that ranking. Every client receives the full model (reference)
   and then its tier's variant, evaluates both on its test rows and replies with metrics and scores.
6. Results: per-device rows, per-tier and pooled aggregates, history, failures, plot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from fedshaver.api import attribution_data, attribution_options, checkpoint_metadata, configure_torch, new_model, prepare
from fedshaver.config import ExperimentConfig, resolve_paths
from fedshaver.data.partition import Partitions, partition_clients
from fedshaver.devices import DeviceProfile, assign_tiers, load_device_profile
from fedshaver.errors import InfeasibleBudgetError, PartitionError
from fedshaver.federated import messages
from fedshaver.federated.strategy import OrderedFedAvg, short_error
from fedshaver.metrics import pool_predictions
from fedshaver.models import CTRModel
from fedshaver.results import MODEL_FILE, StagedFolder, attribution_file, unique_run_path, write_config, write_csv, write_json
from fedshaver.shaver.attribution import Attribution
from fedshaver.shaver.methods import attribute, build_ranking
from fedshaver.shaver.pruning import EmbeddingVariant, kept_for_bytes
from fedshaver.training import evaluate_model, save_checkpoint

logger = logging.getLogger(__name__)

# Simulated SuperNodes register within seconds; the wait covers slow machines starting Ray.
NODE_WAIT_SECONDS = 120.0
NODE_REPORT_SECONDS = 10.0


@dataclass
class FederatedResult:
    """Tables of a federated run, as written into its run folder.

    Attributes
    ----------
    run_dir : Path
    history : pandas.DataFrame
        One row per round: clients sampled, succeeded and failed, weighted training log loss, central
        validation AUC and LogLoss, seconds. Round 0 is the initial model.
    devices : pandas.DataFrame
        One row per client device: tier, budget, stored bytes, sparsity, examples, AUC, LogLoss and the
        reference AUC and LogLoss of the unpruned model.
    tiers : pandas.DataFrame
        One row per tier plus ``all``: pooled AUC and LogLoss of the variants and of the reference. The
        ``all`` row's bytes and sparsity are means over devices.
    failures : pandas.DataFrame
        One row per failed client call: round, phase, partition id, error.
    partitions : pandas.DataFrame
        Row and click counts of every client partition.
    attribution : Attribution or None
        Shapley values of the global model (None when only training ran).
    timings : dict
        Seconds spent in each phase.
    model : CTRModel or None
        The final global model.
    """

    run_dir: Path
    history: pd.DataFrame
    devices: pd.DataFrame
    tiers: pd.DataFrame
    failures: pd.DataFrame
    partitions: pd.DataFrame
    attribution: Attribution | None = None
    timings: dict = field(default_factory=dict)
    model: CTRModel | None = None

    def summary_text(self) -> str:
        """Return the per-tier table and the run folder as printable text."""
        columns = [
            "tier", "budget", "devices", "failed", "bytes", "sparsity", "examples",
            "pooled_auc", "pooled_logloss", "ref_pooled_auc", "delta_auc",
        ]  # fmt: skip
        shown = self.tiers[[c for c in columns if c in self.tiers.columns]]
        with pd.option_context("display.width", 200, "display.float_format", "{:.5f}".format):
            table = shown.to_string(index=False)
        lines = [table, f"failed client calls: {len(self.failures)}", f"run folder: {self.run_dir}"]
        return "\n".join(lines)


FAILURE_COLUMNS = ["round", "phase", "partition_id", "node_id", "error", "detail"]
_NO_EVALUATION = {"examples": 0, "positives": 0, "auc": float("nan"), "auc_defined": False, "logloss": float("nan"), "received_bytes": 0}


def _pool(pooled: dict, prefix: str, groups: tuple[str, ...], scores: ArrayRecord) -> None:
    """Append a client's test labels and logits to the pools of its groups (its tier and ``all``)."""
    for group in groups:
        bucket = pooled.setdefault(f"{prefix}{group}", {"labels": [], "logits": []})
        bucket["labels"].append(scores["labels"].numpy())
        bucket["logits"].append(scores["logits"].numpy())


class FederatedJob:
    """One federated run: setup on construction-time data, then :meth:`run` with a Flower ``Grid``.

    Parameters
    ----------
    config : ExperimentConfig
        The experiment.
    run_dir : path, optional
        Output folder (default: a new folder under ``output.run_dir``).
    progress : bool
        Show progress bars for server-side work.
    """

    def __init__(self, config: ExperimentConfig, run_dir: Path | str | None = None, progress: bool = True):
        self.config = config
        self.progress = progress
        self.paths = resolve_paths(config)
        self.final_dir = Path(run_dir) if run_dir else unique_run_path(self.paths["run_dir"], config.name)
        self.folder: StagedFolder | None = None
        self.timings: dict[str, float] = {}
        self.result: FederatedResult | None = None

    @property
    def run_dir(self) -> Path:
        """Folder written during the run: a hidden staging folder, or the final folder once committed."""
        return self.folder.path if self.folder is not None else self.final_dir

    def discard(self) -> None:
        """Remove everything the run wrote, after a failure."""
        if self.folder is not None:
            self.folder.discard()
            self.folder = None

    # Phase 1 -----------------------------------------------------------------------------------

    def setup(self) -> None:
        """Prepare data, partitions and tiers, and check every budget, before any client runs.

        Raises
        ------
        PartitionError, DeviceProfileError, InfeasibleBudgetError
            On unusable partitions, an invalid profile, or a budget no layout can meet.
        """
        try:
            self._setup()
        except BaseException:
            self.discard()
            raise

    def _setup(self) -> None:
        started = time.perf_counter()
        config = self.config
        federation = config.federation
        configure_torch(config)
        self.dataset = prepare(config, progress=self.progress)
        fm = self.dataset.feature_map
        self.partitions: Partitions = partition_clients(
            self.dataset,
            federation.num_clients,
            federation.partitioner,
            seed=config.seed,
            alpha=federation.dirichlet_alpha,
            partition_by=federation.partition_by,
            min_train_rows=federation.min_partition_rows,
        )
        self.partition_table = self.partitions.table(self.dataset)

        self.profile: DeviceProfile = load_device_profile(self.paths["device_profile"])
        self.tier_of = assign_tiers(self.profile, federation.num_clients, config.seed)
        codebook = config.shaver.placeholder == "codebook"
        for tier in self.profile.tiers:
            if tier.budget.bytes is None:
                continue
            try:
                kept_for_bytes(tier.budget.bytes, fm.num_features, config.model.embed_dim, fm.num_fields, codebook)
            except InfeasibleBudgetError as error:
                raise InfeasibleBudgetError(
                    f"{self.profile.source}: device tier {tier.name!r}: {error}", error.requested, error.minimum
                ) from None

        # Everything is valid: only now does the run write files, into a staging folder.
        self.folder = StagedFolder(self.final_dir)
        self.partitions_path = self.run_dir / "partitions.npz"
        self.partitions.save(self.partitions_path)
        self.model = new_model(config, fm.num_features, fm.num_fields)
        self.job = messages.job_record(config, str(self.dataset.path), str(self.partitions_path))
        write_config(config, self.run_dir, {"prepared_dataset": str(self.dataset.path), "run_kind": "federated"})
        fm.save(self.run_dir / "feature_map.json")
        write_csv(self.partition_table, self.run_dir / "partitions.csv")
        self.timings["setup"] = time.perf_counter() - started
        logger.info(
            "Setup: %d clients (%s partitions), %d tiers, %d features x %d dims, run folder %s",
            federation.num_clients, federation.partitioner, len(self.profile.tiers), fm.num_features,
            config.model.embed_dim, self.final_dir,
        )

    # Phase 2 -----------------------------------------------------------------------------------

    def wait_for_nodes(self, grid: Grid) -> list[int]:
        """Wait until ``num_clients`` nodes are connected and return their ids.

        Raises
        ------
        PartitionError
            When a different number of nodes is connected after the wait.
        """
        expected = self.config.federation.num_clients
        started = time.monotonic()
        deadline = started + NODE_WAIT_SECONDS
        next_report = started + NODE_REPORT_SECONDS
        nodes = list(grid.get_node_ids())
        while len(nodes) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
            nodes = list(grid.get_node_ids())
            if time.monotonic() >= next_report:
                next_report += NODE_REPORT_SECONDS
                logger.info(
                    "Waiting for SuperNodes: %d of %d connected after %.0fs (giving up after %.0fs)",
                    len(nodes), expected, time.monotonic() - started, NODE_WAIT_SECONDS,
                )
        if len(nodes) != expected:
            raise PartitionError(
                f"the federation has {len(nodes)} SuperNodes but federation.num_clients is {expected}; start it with "
                f"{expected} SuperNodes (flwr run . --federation-config \"num-supernodes={expected}\")"
            )
        return sorted(nodes)

    def handshake(self, grid: Grid) -> None:
        """Ask every node for its partition id and feature counts; map partitions to nodes."""
        started = time.perf_counter()
        nodes = self.wait_for_nodes(grid)
        content = RecordDict({messages.JOB: self.job})
        replies = grid.send_and_receive(
            [Message(content, dst_node_id=node, message_type="query") for node in nodes], timeout=self.config.federation.round_timeout
        )
        self.node_of_partition: dict[int, int] = {}
        self.feature_counts = np.zeros(self.dataset.feature_map.num_features, dtype=np.int64)
        errors = []
        for reply in replies:
            if reply.has_error():
                errors.append(f"node {reply.metadata.src_node_id}: {short_error(reply.error.reason)}")
                continue
            partition = int(reply.content.metric_records[messages.METRICS]["partition-id"])
            self.node_of_partition[partition] = reply.metadata.src_node_id
            self.feature_counts += reply.content.array_records[messages.COUNTS]["feature-counts"].numpy()
        missing = sorted(set(range(self.config.federation.num_clients)) - set(self.node_of_partition))
        if errors or missing:
            raise PartitionError(
                f"handshake failed: clients {missing} did not report their partition ({'; '.join(errors)[:2000]})"
            )
        self.timings["handshake"] = time.perf_counter() - started

    # Phase 3 -----------------------------------------------------------------------------------

    def central_evaluation(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Evaluate global weights on the server's validation split; one log line per round."""
        messages.load_model_record(self.model, arrays)
        metrics = evaluate_model(self.model, self.dataset.valid)
        self.central.append({"round": server_round, "valid_auc": metrics.auc, "valid_logloss": metrics.logloss})
        if server_round > 0 and self.strategy.rounds:
            record = self.strategy.rounds[-1]
            logger.info(
                "Round %d/%d: %d of %d sampled clients trained, train logloss %.5f, server valid AUC %.5f, LogLoss %.5f (%.1fs)",
                server_round, self.config.federation.rounds, record["succeeded"], record["sampled"],
                record["train_logloss"], metrics.auc, metrics.logloss, record["seconds"],
            )
        return MetricRecord({"valid-auc": metrics.auc, "valid-logloss": metrics.logloss})

    def train(self, grid: Grid) -> None:
        """Run the FedAvg rounds and load the final global weights into ``self.model``."""
        started = time.perf_counter()
        federation = self.config.federation
        self.central: list[dict] = []
        self.strategy = OrderedFedAvg(self.node_of_partition, self.job, self.config.seed, federation.fraction_train)
        result = self.strategy.start(
            grid=grid,
            initial_arrays=messages.model_record(self.model),
            num_rounds=federation.rounds,
            timeout=federation.round_timeout,
            train_config=ConfigRecord({"local-epochs": federation.local_epochs}),
            evaluate_fn=self.central_evaluation,
        )
        final = result.arrays if len(result.arrays) else messages.model_record(self.model)
        messages.load_model_record(self.model, final)
        rounds = pd.DataFrame(self.strategy.rounds, columns=["round", "sampled", "succeeded", "failed", "train_logloss", "seconds"])
        self.history = pd.DataFrame(self.central).merge(rounds, on="round", how="left")
        self.timings["training"] = time.perf_counter() - started

    # Phase 4 -----------------------------------------------------------------------------------

    def shave(self) -> None:
        """Solve the placeholder from the clients' feature counts and estimate Shapley values once."""
        started = time.perf_counter()
        fm = self.dataset.feature_map
        name = self.config.shaver.placeholder
        self.attribution = attribute(
            self.model,
            fm,
            attribution_data(self.config, self.dataset.valid),
            name,
            attribution_options(self.config, self.progress),
            frequencies=self.feature_counts,
        )
        self.attribution.save(self.run_dir / attribution_file(name))
        method = "shaver_codebook" if name == "codebook" else "shaver_zero"
        self.ranking = build_ranking(method, self.model, fm, attribution=self.attribution)
        self.variants: dict[str, EmbeddingVariant] = {tier.name: self.ranking.variant(tier.budget) for tier in self.profile.tiers}
        for tier, variant in self.variants.items():
            logger.info("Tier %s: %s -> %d bytes (%s), sparsity %.4f", tier, variant.label, variant.nbytes, variant.layout, variant.sparsity)
        self.timings["shaver"] = time.perf_counter() - started

    # Phase 5 -----------------------------------------------------------------------------------

    def _send_evaluation(self, grid: Grid, kind: str) -> dict[int, Message]:
        full = messages.model_record(self.model)
        head = messages.head_record(self.model)
        outgoing = []
        for partition, node in sorted(self.node_of_partition.items()):
            tier = self.tier_of[partition]
            content = {messages.JOB: self.job, messages.DEPLOY: ConfigRecord({"kind": kind, "tier": tier})}
            if kind == "reference":
                content[messages.ARRAYS] = full
            else:
                arrays, description = messages.variant_records(self.variants[tier], tier)
                content[messages.HEAD] = head
                content[messages.EMBEDDING] = arrays
                content[messages.LAYOUT] = description
            outgoing.append(Message(RecordDict(content), dst_node_id=node, message_type="evaluate"))
        replies = grid.send_and_receive(outgoing, timeout=self.config.federation.round_timeout)
        received = {}
        for reply in replies:
            partition = self.strategy.partition_of_node.get(reply.metadata.src_node_id, -1)
            if reply.has_error():
                self.strategy.record_failure(None, f"evaluate-{kind}", partition, reply.metadata.src_node_id, reply.error.reason)
            else:
                received[partition] = reply
        for partition, node in self.node_of_partition.items():
            if partition not in received and not any(
                f["partition_id"] == partition and f["phase"] == f"evaluate-{kind}" for f in self.strategy.failures
            ):
                self.strategy.record_failure(None, f"evaluate-{kind}", partition, node, "no reply within the round timeout")
        return received

    def deploy(self, grid: Grid) -> None:
        """Evaluate the reference model and then each client's tier variant on every client."""
        started = time.perf_counter()
        self.reference_replies = self._send_evaluation(grid, "reference")
        self.variant_replies = self._send_evaluation(grid, "variant")
        self.timings["deploy"] = time.perf_counter() - started

    # Phase 6 -----------------------------------------------------------------------------------

    def collect(self) -> FederatedResult:
        """Build and write the result tables and the plot."""
        from fedshaver import plots  # matplotlib is imported only when results are written

        rows = []
        pooled: dict[str, dict[str, list]] = {}
        for partition in range(self.config.federation.num_clients):
            tier = self.tier_of[partition]
            variant = self.variants[tier]
            row = {
                "device": partition,
                "node_id": self.node_of_partition.get(partition),
                "tier": tier,
                "budget": variant.label,
                "budget_kind": variant.budget.kind if variant.budget is not None else "bits",
                "budget_value": variant.budget.value if variant.budget is not None else float("nan"),
                "bytes": variant.nbytes,
                "layout": variant.layout,
                "sparsity": variant.sparsity,
                "train_rows": int(self.partition_table.loc[partition, "train_rows"]),
            }
            errors = list(dict.fromkeys(
                f["error"] for f in self.strategy.failures if f["partition_id"] == partition and f["phase"].startswith("evaluate")
            ))  # fmt: skip
            for prefix, replies in (("", self.variant_replies), ("ref_", self.reference_replies)):
                row.update({f"{prefix}{key}": value for key, value in _NO_EVALUATION.items()})
                reply = replies.get(partition)
                if reply is None:
                    continue
                values = reply.content.metric_records[messages.METRICS]
                row[f"{prefix}examples"] = int(values["examples"])
                row[f"{prefix}positives"] = int(values["positives"])
                row[f"{prefix}auc"] = float(values["auc"])
                row[f"{prefix}auc_defined"] = bool(values["auc-defined"])
                row[f"{prefix}logloss"] = float(values["logloss"])
                row[f"{prefix}received_bytes"] = int(values["received-bytes"])
                groups = (tier, "all")
                _pool(pooled, prefix, groups, reply.content.array_records[messages.PREDICTIONS])
                if prefix == "" and "tuned-auc" in values:
                    row["tuned_auc"] = float(values["tuned-auc"])
                    row["tuned_auc_defined"] = bool(values["tuned-auc-defined"])
                    row["tuned_logloss"] = float(values["tuned-logloss"])
                    _pool(pooled, "tuned_", groups, reply.content.array_records["tuned-predictions"])
            if errors:
                row["status"] = "failed"
            elif row["examples"] == 0:
                row["status"] = "no test rows"
            else:
                row["status"] = "ok"
            row["error"] = "; ".join(errors)
            rows.append(row)
        devices = pd.DataFrame(rows)
        tiers = self._tier_table(devices, pooled)
        failures = pd.DataFrame(self.strategy.failures, columns=FAILURE_COLUMNS)

        write_csv(self.history, self.run_dir / "history.csv")
        write_csv(devices, self.run_dir / "devices.csv")
        write_csv(tiers, self.run_dir / "tiers.csv")
        write_json(tiers.to_dict("records"), self.run_dir / "tiers.json")
        write_csv(failures, self.run_dir / "failures.csv")
        write_csv(self.profile.table(), self.run_dir / "device_profile.csv")
        plots.plot_device_auc(devices, self.run_dir / "devices_auc.png")
        plots.plot_history(self.history, self.run_dir / "history.png")
        write_json({"timings_seconds": self.timings, "failures": len(failures), "fedshaver_run": self.config.name}, self.run_dir / "summary.json")
        self.result = FederatedResult(
            self.run_dir, self.history, devices, tiers, failures, self.partition_table, self.attribution, dict(self.timings), self.model
        )
        return self.result

    def _tier_table(self, devices: pd.DataFrame, pooled: dict) -> pd.DataFrame:
        rows = []
        groups = [(tier.name, devices[devices["tier"] == tier.name]) for tier in self.profile.tiers] + [("all", devices)]
        for name, members in groups:
            variant = self.variants.get(name)
            ok = members[members["status"] == "ok"]
            metrics = pool_predictions(pooled.get(name, {}).get("labels", []), pooled.get(name, {}).get("logits", []))
            reference = pool_predictions(pooled.get(f"ref_{name}", {}).get("labels", []), pooled.get(f"ref_{name}", {}).get("logits", []))
            defined = ok[ok["auc_defined"]]
            row = {
                "tier": name,
                "budget": variant.label if variant is not None else "mixed",
                "devices": len(members),
                "failed": int((members["status"] == "failed").sum()),
                "auc_undefined": int(len(ok) - len(defined)),
                "bytes": variant.nbytes if variant is not None else float(members["bytes"].mean()),
                "sparsity": variant.sparsity if variant is not None else float(members["sparsity"].mean()),
                "examples": metrics.examples,
                "pooled_auc": metrics.auc,
                "pooled_logloss": metrics.logloss,
                "mean_device_auc": float(defined["auc"].mean()) if len(defined) else float("nan"),
                "ref_pooled_auc": reference.auc,
                "ref_pooled_logloss": reference.logloss,
            }
            row["delta_auc"] = row["pooled_auc"] - row["ref_pooled_auc"]
            if f"tuned_{name}" in pooled:
                tuned = pool_predictions(pooled[f"tuned_{name}"]["labels"], pooled[f"tuned_{name}"]["logits"])
                row["tuned_pooled_auc"] = tuned.auc
                row["tuned_pooled_logloss"] = tuned.logloss
            rows.append(row)
        return pd.DataFrame(rows)

    # Driver ------------------------------------------------------------------------------------

    def run(self, grid: Grid, train_only: bool = False) -> FederatedResult:
        """Run phases 2-6 with ``grid`` (phase 1, :meth:`setup`, must have run).

        With ``train_only`` the run stops after federated training: the result contains the history,
        failures and the global model, and empty device and tier tables. The run folder appears only
        when the run succeeds; a failure removes what the run wrote.
        """
        try:
            result = self._run(grid, train_only)
        except BaseException:
            self.discard()
            raise
        self.final_dir = self.folder.commit()
        self.folder = None
        result.run_dir = self.final_dir
        logger.info("Federated run finished: %s", ", ".join(f"{k} {v:.1f}s" for k, v in self.timings.items()))
        return result

    def _run(self, grid: Grid, train_only: bool) -> FederatedResult:
        self.handshake(grid)
        self.train(grid)
        save_checkpoint(
            self.model,
            self.run_dir / MODEL_FILE,
            checkpoint_metadata(self.config, self.dataset.feature_map.num_features, self.dataset.feature_map.num_fields),
        )
        if train_only:
            write_csv(self.history, self.run_dir / "history.csv")
            failures = pd.DataFrame(self.strategy.failures, columns=FAILURE_COLUMNS)
            write_csv(failures, self.run_dir / "failures.csv")
            self.result = FederatedResult(
                self.run_dir, self.history, pd.DataFrame(), pd.DataFrame(), failures, self.partition_table,
                None, dict(self.timings), self.model,
            )
            return self.result
        self.shave()
        self.deploy(grid)
        return self.collect()
