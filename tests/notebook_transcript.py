"""The GRU notebook's model classes and save_model, transcribed from ../shared/seed/gru-notebook.txt.

Test-only: namegen must read the files these write without importing them.
Docstrings shortened; the code is the notebook's, statement for statement.
"""

import os
from datetime import datetime

import torch
import torch.nn as nn


class GRUCell(nn.Module):
    def __init__(self, embd_dim, hidden_dim):
        super().__init__()
        self.embd_dim = embd_dim
        self.hidden_dim = hidden_dim

        # Candidate transformation
        self.Wx = nn.Linear(embd_dim, hidden_dim, bias = True)
        self.Wh = nn.Linear(hidden_dim, hidden_dim, bias = False)

        # Update Gate Specific Parameters
        self.Wzx = nn.Linear(embd_dim, hidden_dim, bias = True)
        self.Wzh = nn.Linear(hidden_dim, hidden_dim, bias = False)
        self.bias_z = nn.Parameter(torch.zeros(hidden_dim))

        # Reset Gate Specific Parameters
        self.Wrx = nn.Linear(embd_dim, hidden_dim, bias = True)
        self.Wrh = nn.Linear(hidden_dim, hidden_dim, bias = False)
        self.bias_r = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x, h_prev):
        r_t = torch.sigmoid((self.Wrx(x)) + (self.Wrh(h_prev)) + self.bias_r)
        z_t = torch.sigmoid((self.Wzx(x)) + (self.Wzh(h_prev)) + self.bias_z)
        h_tilde = torch.tanh(self.Wx(x) + self.Wh(r_t * h_prev))

        h = (1 - z_t) * h_prev + z_t * h_tilde
        return h


class GRULayer(nn.Module):
    def __init__(self, embd_dim, hidden_dim, dropout = 0.0):
        super().__init__()
        self.grucell = GRUCell(embd_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, h_prev = None):
        batch, seq_length, _ = x.shape # x.shape --> batch, seq_length, embd_dim
        if h_prev is None:
            h_prev = torch.zeros(batch, self.grucell.hidden_dim, device = x.device)

        hidden_states = []
        for t in range(seq_length):
            x_t = x[:, t, :]
            h_prev = self.grucell(x_t, h_prev)
            h_prev = self.dropout(h_prev)
            hidden_states.append(h_prev)

        # Stack list into tensor
        hidden_states = torch.stack(hidden_states, dim=1)
        return hidden_states


class Linear(nn.Module):
    def __init__(self, hidden_dim, n_classes):
        super().__init__()
        self.linear_projection = nn.Linear(in_features = hidden_dim, out_features = n_classes, bias = True)

    def forward(self, x):
        return self.linear_projection(x)


class GRU_SmallModel(nn.Module):
    def __init__(self, n_classes, embd_dim, hidden_dim, dropout = 0.0):
        super().__init__()

        self.embedding = nn.Embedding(
            num_embeddings=n_classes,
            embedding_dim=embd_dim
        )

        self.gru = GRULayer(
            embd_dim=embd_dim,
            hidden_dim=hidden_dim
        )

        self.linear = Linear(
            hidden_dim=hidden_dim,
            n_classes=n_classes
        )

        self.n_classes = n_classes
        self.embd_dim = embd_dim
        self.hidden_dim = hidden_dim

    def forward(self, x):
        x = self.embedding(x)
        h = self.gru(x)
        logits = self.linear(h)   # (batch, seq_len, n_classes)
        return logits


class GRU_MediumModel(nn.Module):
    def __init__(self, n_classes, embd_dim, hidden_dim, dropout = 0.1):
        super().__init__()

        self.embedding = nn.Embedding(
            num_embeddings=n_classes,
            embedding_dim=embd_dim
        )

        self.gru_layer_1 = GRULayer(
            embd_dim=embd_dim,
            hidden_dim=hidden_dim,
            dropout = dropout
        )

        self.gru_layer_2 = GRULayer(
            embd_dim = hidden_dim,
            hidden_dim = hidden_dim,
            dropout = dropout
        )

        self.linear = Linear(
            hidden_dim=hidden_dim,
            n_classes=n_classes
        )

        self.n_classes = n_classes
        self.embd_dim = embd_dim
        self.hidden_dim = hidden_dim
        self.dropout = dropout

    def forward(self, x):
        x = self.embedding(x)
        h1 = self.gru_layer_1(x)
        h2 = self.gru_layer_2(h1)
        logits = self.linear(h2)   # (batch, seq_len, n_classes)
        return logits


class GRU_LargeModel(nn.Module):
    def __init__(self, n_classes, embd_dim, hidden_dim, dropout = 0.2):
        super().__init__()

        self.embedding = nn.Embedding(
            num_embeddings=n_classes,
            embedding_dim=embd_dim
        )

        self.gru_layer_1 = GRULayer(
            embd_dim=embd_dim,
            hidden_dim=hidden_dim,
            dropout = dropout
        )
        self.gru_layer_2 = GRULayer(
            embd_dim = hidden_dim,
            hidden_dim = hidden_dim,
            dropout = dropout
        )
        self.gru_layer_3 = GRULayer(
            embd_dim = hidden_dim,
            hidden_dim = hidden_dim,
            dropout = dropout
        )

        self.norm = nn.LayerNorm(hidden_dim)

        self.linear = Linear(
            hidden_dim=hidden_dim,
            n_classes=n_classes
        )

        self.n_classes = n_classes
        self.embd_dim = embd_dim
        self.hidden_dim = hidden_dim

    def forward(self, x):
        x = self.embedding(x)
        h1 = self.gru_layer_1(x)
        h2 = self.gru_layer_2(h1)
        h3 = self.gru_layer_3(h2)
        h3_norm = self.norm(h3)
        logits = self.linear(h3_norm)   # (batch, seq_len, n_classes)
        return logits


MODEL_REGISTRY = {
    "GRU_SmallModel": GRU_SmallModel,
    "GRU_MediumModel": GRU_MediumModel,
    "GRU_LargeModel": GRU_LargeModel,
}


def save_model(model, base_name="GRU", path="./saved_models/"):
    os.makedirs(path, exist_ok=True)

    # versioning
    existing = [f for f in os.listdir(path) if f.startswith(base_name) and f.endswith(".pth")]
    versions = []
    for f in existing:
        parts = f.replace(".pth", "").split("_v")
        if len(parts) == 2 and parts[1].isdigit():
            versions.append(int(parts[1]))
    next_version = max(versions, default=0) + 1

    filename = f"{base_name}_v{next_version}.pth"
    save_path = os.path.join(path, filename)

    checkpoint = {
        "state_dict": model.state_dict(),
        "model_class": model.__class__.__name__,
        "n_classes": model.n_classes,
        "embd_dim": model.embd_dim,
        "hidden_dim": model.hidden_dim,
        "timestamp": datetime.now().strftime("%Y-%m-%d %H:%M:%S"),
        "version": next_version,
    }

    torch.save(checkpoint, save_path)
    torch.save(checkpoint, os.path.join(path, f"{base_name}_latest.pth"))

    print(f"\nModel saved at: {save_path}")
    print(f"Also updated: {base_name}_latest.pth\n")
    return save_path


def load_model(filepath, device):
    """The notebook's loader, minus its printing: used to check round trips."""
    checkpoint = torch.load(filepath, map_location=device)

    class_name = checkpoint["model_class"]
    if class_name not in MODEL_REGISTRY:
        raise ValueError(f"Unknown model class '{class_name}' in checkpoint.")

    ModelClass = MODEL_REGISTRY[class_name]

    model = ModelClass(
        n_classes=checkpoint["n_classes"],
        embd_dim=checkpoint["embd_dim"],
        hidden_dim=checkpoint["hidden_dim"]
    ).to(device)

    model.load_state_dict(checkpoint["state_dict"])
    return model
