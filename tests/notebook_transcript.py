"""The GRU notebook (gru-notebook.txt, the project's seed, kept outside the repository), transcribed: the one transcription in the repo.

Test-only: namegen must read the files these write without importing them;
tests/test_notebook.py builds notebook .pth files with it, and bench/ imports it
(via sys.path) as the baseline namegen is timed against. Nothing here imports bench/.

Docstrings shortened; the code is the notebook's, statement for statement, with
these changes, each forced by moving notebook cells into importable functions:

- cell 1's module-level vocabulary (``chars``, ``stoi``, ``itos``, read from
  'names.txt' at import) is ``build_vocab(words)``; ``generate_dataset`` takes
  ``stoi`` and the file's path (default 'names.txt', as the notebook);
- cell 2's split and cell 16's DataLoaders are ``prepare_data``, whose
  ``batch_size`` (default 64, the notebook's code) and ``random_state`` (default
  None, the notebook's) are parameters;
- cell 16's three model + optimizer blocks are ``make_model(size, device)``;
- ``train_one_epoch`` is the body of ``train_model``'s ``for epoch`` loop (cell 12),
  without the per-epoch validation pass and the every-10-epochs print;
- ``generate_names`` takes the notebook's global ``itos`` as its last argument;
- ``load_model`` does not print its summary.
"""

import os
from datetime import datetime

import torch
import torch.nn as nn
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset, DataLoader

# The notebook's hyperparameter table. Its code (cell 16) fed all three sizes
# through one DataLoader with batch_size=64; the table says:
TABLE_BATCH_SIZE = {"small": 128, "medium": 128, "large": 256}


# ---------------------------------------------------------------------------- cell 1: tokens and padding


def build_vocab(words):
    chars = sorted(list(set(''.join(words))))

    # Reserve 0 for PAD token
    stoi = {c: i+2 for i, c in enumerate(chars)}  # alphabet starts at index 2
    stoi['.'] = 1   # END token
    stoi['<PAD>'] = 0   # padding token
    itos = {i: c for c, i in stoi.items()}
    return stoi, itos


def encode_word(word, stoi):
    return [stoi[c] for c in word] + [stoi['.']]


def decode_indices(indices, itos):
    return [itos[i.item()] for i in indices]


def pad_sequences(sequences, max_len):
    X, Y = [], []

    for seq in sequences:
        x = seq[:-1]                        # all but last char
        y = seq[1:]                         # all but first char

        # padding
        x += [0] * (max_len - len(x))
        y += [-100] * (max_len - len(y))

        X.append(x)
        Y.append(y)

    return torch.tensor(X), torch.tensor(Y)


def generate_dataset(stoi, path='names.txt'):
    words = open(path, mode = 'r', encoding='utf-8').read().splitlines()
    encoded = [encode_word(w, stoi) for w in words]
    max_len = max(len(seq) for seq in encoded)
    x_tensor, y_tensor = pad_sequences(encoded, max_len)
    return x_tensor.long(), y_tensor.long()


# ---------------------------------------------------------------------------- cells 2 and 16: split, DataLoaders


def prepare_data(path='names.txt', batch_size=64, random_state=None):
    """(train_loader, val_loader, stoi, itos), as cells 1, 2 and 16 build them."""
    words = open(path, mode = 'r', encoding='utf-8').read().splitlines()
    stoi, itos = build_vocab(words)

    X, y = generate_dataset(stoi, path)
    x_train, x_val, y_train, y_val = train_test_split(
        X, y, test_size = 0.2, random_state = random_state)

    train_loader = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=batch_size,
        shuffle = True
    )

    val_loader = DataLoader(
        TensorDataset(x_val, y_val),
        batch_size = batch_size,
        shuffle = False
    )
    return train_loader, val_loader, stoi, itos


# ---------------------------------------------------------------------------- cells 3 to 9: the models


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


# ---------------------------------------------------------------------------- cell 16: the three recipes


def make_model(size, device):
    """(model, optimizer, loss_fn) for 'small', 'medium' or 'large', as cell 16 builds them."""
    loss_fn = nn.CrossEntropyLoss()
    if size == "small":
        small_model = GRU_SmallModel(
            n_classes = 28,
            embd_dim = 64,
            hidden_dim = 128,
            dropout = 0.0
        ).to(device)
        lr_small_model = 1e-3
        optimizer_small = torch.optim.Adam(small_model.parameters(), lr = lr_small_model)
        return small_model, optimizer_small, loss_fn
    if size == "medium":
        medium_model = GRU_MediumModel(
            n_classes=28,
            embd_dim = 96,
            hidden_dim = 256,
            dropout = 0.1
        ).to(device)
        lr_medium_model = 5e-4
        optimizer_medium = torch.optim.Adam(medium_model.parameters(), lr = lr_medium_model)
        return medium_model, optimizer_medium, loss_fn
    if size == "large":
        large_model = GRU_LargeModel(
            n_classes=28,
            embd_dim = 128,
            hidden_dim = 512,
            dropout = 0.2
        ).to(device)
        lr_large_model = 3e-4
        optimizer_large = torch.optim.AdamW(large_model.parameters(), lr = lr_large_model)
        return large_model, optimizer_large, loss_fn
    raise ValueError(f"unknown size {size!r}")


# ---------------------------------------------------------------------------- cell 11: validation loss


def evaluate_validation_loss(model, val_loader, loss_fn, device):
    model.eval()     # IMPORTANT: evaluation mode
    total_loss = 0.0
    batches = 0

    with torch.no_grad():
        for xb, yb in val_loader:
            xb, yb = xb.to(device), yb.to(device)

            logits = model(xb)

            loss = loss_fn(
                logits.reshape(-1, logits.size(-1)),
                yb.reshape(-1)
            )

            total_loss += loss.item()
            batches += 1

    model.train()   # switch back to training mode
    return total_loss / batches


# ---------------------------------------------------------------------------- cell 12: one epoch of train_model


def train_one_epoch(model, train_loader, device, optimizer, loss_fn):
    """One pass of train_model's epoch loop: the training part, returning train_loss."""
    model.train()
    total_loss = 0.0
    last_logits = None

    for i, (xb, yb) in enumerate(train_loader):
        xb, yb = xb.to(device), yb.to(device)

        optimizer.zero_grad()
        logits = model(xb)

        loss = loss_fn(
            logits.reshape(-1, logits.size(-1)),
            yb.reshape(-1)
        )
        if i == 0:
            last_logits = logits.detach()

        loss.backward()

        optimizer.step()
        total_loss += loss.item()

    train_loss = total_loss / len(train_loader)
    return train_loss


# ---------------------------------------------------------------------------- cell 29: sampling


def generate_names(model, num_names, start_token, max_len, device, itos):
    model.eval()
    results = []

    for i in range(1, num_names + 1):
        context = torch.tensor([[start_token]], device=device)  # (1, 1)

        for _ in range(max_len):
            logits = model(context)              # (1, seq_len, vocab)
            last_logits = logits[:, -1, :]       # last timestep
            probs = torch.softmax(last_logits, dim=-1)

            next_id = torch.multinomial(probs, num_samples=1).item()
            context = torch.cat([
                context,
                torch.tensor([[next_id]], device=device)
            ], dim=1)

            if next_id == 1:   # end token
                break

        # Decode
        token_ids = context[0].tolist()[1:]      # remove start token
        name = ''.join(itos[t] for t in token_ids)

        results.append(name)

        # Print with numeric prefix
        print(f"{i}. {name.capitalize()}")

    return results


# ---------------------------------------------------------------------------- cells 14 and 15: save and load


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
