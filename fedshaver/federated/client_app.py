"""Flower ClientApp of fedshaver: routes each message type to :mod:`fedshaver.federated.client`."""

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedshaver.federated import client

app = ClientApp()


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Report the partition id, partition sizes and feature counts."""
    return client.handle_query(msg, context)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model locally."""
    return client.handle_train(msg, context)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model or device variant on the local test rows."""
    return client.handle_evaluate(msg, context)
