"""The seed's PyTorch text classifier, trained as a Nimbus job through the ``nr`` API.

Token embeddings -> mean over the (non-padding) tokens -> linear layer. The vocabulary is
built from the train split with Nimbus's :class:`~nimbus.modelformat.text.TextEncoder`, whose
rules travel in spec.json, so a deployment tokenises requests exactly as training did.
Resumable and exact: the checkpoint holds the model, the optimizer and the RNG state::

    nimbus train --dataset reviews --model examples/torch_text.py --param epochs=10
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nimbus import runtime as nr
from nimbus.modelformat.text import build_encoder


class TextClassifier(nn.Module):
    def __init__(self, vocab_size: int, embed_dim: int, classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.linear = nn.Linear(embed_dim, classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).float()
        mean = (self.embedding(ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.linear(mean)


def main() -> None:
    params = nr.params
    epochs = int(params.get("epochs", 10))
    batch_size = int(params.get("batch_size", 32))
    torch.manual_seed(int(params.get("seed", 0)))
    data = nr.dataset()
    encoder = build_encoder(data.train.x, max_len=int(params.get("max_len", 64)))
    x_train = torch.from_numpy(encoder.encode(data.train.x))
    y_train = torch.from_numpy(data.train.y)

    model = TextClassifier(encoder.vocab_size, int(params.get("embed_dim", 64)), len(data.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=float(params.get("lr", 0.01)))
    start = 0
    state = nr.restore()  # an earlier attempt's last checkpoint, if any
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start = state["epoch"]

    batches = (len(y_train) + batch_size - 1) // batch_size
    for epoch in range(start + 1, epochs + 1):
        model.train()
        order = torch.randperm(len(y_train))
        total = 0.0
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            nr.progress(epoch, epochs, b + 1, batches)
        metrics = {"train_loss": total / len(y_train)}
        if len(data.val):
            metrics["val_accuracy"] = accuracy(model, encoder.encode(data.val.x), data.val.y)
        nr.log(epoch, **metrics)
        nr.checkpoint(
            {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(),
            }
        )

    model.eval()
    if len(data.test):
        with torch.no_grad():
            logits = model(torch.from_numpy(encoder.encode(data.test.x)))
        nr.evaluate(data.test.y, logits)
    nr.save_model(model, encoder.encode(data.train.x[:8]), preprocessing=encoder.preprocessing())


def accuracy(model: nn.Module, ids: object, labels: object) -> float:
    model.eval()
    with torch.no_grad():
        predicted = model(torch.as_tensor(ids)).argmax(dim=1)
    return float((predicted == torch.as_tensor(labels)).float().mean())


if __name__ == "__main__":
    main()
