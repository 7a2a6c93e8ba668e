"""A faithful transcription of the GRU notebook's models, data and sampling, for the benchmark only.

Kept out of the package on purpose: this is the baseline namegen is measured
against. The code follows the notebook cell by cell (GRUCell, GRULayer, Linear,
GRU_Small/Medium/LargeModel, pad_sequences, generate_names); only the
docstrings are shortened, the hard-coded ``itos`` global becomes an argument
of ``generate_names``, and one constructor covers the three model classes
(they differ only in the number of layers and the final LayerNorm).
"""

from __future__ import annotations

import torch
import torch.nn as nn


class GRUCell(nn.Module):
    def __init__(self, embd_dim, hidden_dim):
        super().__init__()
        self.embd_dim = embd_dim
        self.hidden_dim = hidden_dim
        # Candidate transformation
        self.Wx = nn.Linear(embd_dim, hidden_dim, bias=True)
        self.Wh = nn.Linear(hidden_dim, hidden_dim, bias=False)
        # Update Gate Specific Parameters
        self.Wzx = nn.Linear(embd_dim, hidden_dim, bias=True)
        self.Wzh = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.bias_z = nn.Parameter(torch.zeros(hidden_dim))
        # Reset Gate Specific Parameters
        self.Wrx = nn.Linear(embd_dim, hidden_dim, bias=True)
        self.Wrh = nn.Linear(hidden_dim, hidden_dim, bias=False)
        self.bias_r = nn.Parameter(torch.zeros(hidden_dim))

    def forward(self, x, h_prev):
        r_t = torch.sigmoid((self.Wrx(x)) + (self.Wrh(h_prev)) + self.bias_r)
        z_t = torch.sigmoid((self.Wzx(x)) + (self.Wzh(h_prev)) + self.bias_z)
        h_tilde = torch.tanh(self.Wx(x) + self.Wh(r_t * h_prev))
        h = (1 - z_t) * h_prev + z_t * h_tilde
        return h


class GRULayer(nn.Module):
    def __init__(self, embd_dim, hidden_dim, dropout=0.0):
        super().__init__()
        self.grucell = GRUCell(embd_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, h_prev=None):
        batch, seq_length, _ = x.shape  # x.shape --> batch, seq_length, embd_dim
        if h_prev is None:
            h_prev = torch.zeros(batch, self.grucell.hidden_dim, device=x.device)
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
        self.linear_projection = nn.Linear(in_features=hidden_dim, out_features=n_classes, bias=True)

    def forward(self, x):
        return self.linear_projection(x)


class NotebookModel(nn.Module):
    """GRU_SmallModel (1 layer), GRU_MediumModel (2) or GRU_LargeModel (3 + LayerNorm), as the notebook.

    Note: GRU_SmallModel never passed its ``dropout`` to its GRULayer; small's dropout is 0 anyway.
    """

    def __init__(self, n_classes, embd_dim, hidden_dim, n_layer, dropout=0.0, layer_norm=False):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings=n_classes, embedding_dim=embd_dim)
        self.gru_layers = nn.ModuleList(
            GRULayer(embd_dim if i == 0 else hidden_dim, hidden_dim, dropout=dropout) for i in range(n_layer)
        )
        self.norm = nn.LayerNorm(hidden_dim) if layer_norm else None
        self.linear = Linear(hidden_dim=hidden_dim, n_classes=n_classes)
        self.n_classes, self.embd_dim, self.hidden_dim = n_classes, embd_dim, hidden_dim

    def forward(self, x):
        x = self.embedding(x)  # (batch, seq_len, embd_dim)
        for layer in self.gru_layers:
            x = layer(x)  # (batch, seq_len, hidden_dim)
        if self.norm is not None:
            x = self.norm(x)
        return self.linear(x)  # (batch, seq_len, n_classes)

    def load_namegen_weights(self, model) -> None:
        """Copy a namegen GRULanguageModel's weights in (the cell's parameter names are the same)."""
        with torch.no_grad():
            self.embedding.weight.copy_(model.embedding.weight)
            for mine, theirs in zip(self.gru_layers, model.layers):
                mine.grucell.load_state_dict(theirs.state_dict())
            if self.norm is not None:
                self.norm.load_state_dict(model.norm.state_dict())
            self.linear.linear_projection.load_state_dict(model.head.state_dict())


# ---------------------------------------------------------------------------- data, as the notebook


def encode_word(word, stoi):
    return [stoi[c] for c in word] + [stoi["."]]


def pad_sequences(sequences, max_len):
    X, Y = [], []
    for seq in sequences:
        x = seq[:-1]  # all but last char
        y = seq[1:]  # all but first char
        # padding
        x += [0] * (max_len - len(x))
        y += [-100] * (max_len - len(y))
        X.append(x)
        Y.append(y)
    return torch.tensor(X), torch.tensor(Y)


def generate_dataset(words, stoi):
    encoded = [encode_word(w, stoi) for w in words]
    max_len = max(len(seq) for seq in encoded)
    x_tensor, y_tensor = pad_sequences(encoded, max_len)
    return x_tensor.long(), y_tensor.long()


# ---------------------------------------------------------------------------- sampling, as the notebook


def generate_names(model, num_names, start_token, max_len, device, itos):
    model.eval()
    results = []
    for i in range(1, num_names + 1):
        context = torch.tensor([[start_token]], device=device)  # (1, 1)
        for _ in range(max_len):
            logits = model(context)  # (1, seq_len, vocab)
            last_logits = logits[:, -1, :]  # last timestep
            probs = torch.softmax(last_logits, dim=-1)
            next_id = torch.multinomial(probs, num_samples=1).item()
            context = torch.cat([context, torch.tensor([[next_id]], device=device)], dim=1)
            if next_id == 1:  # end token
                break
        # Decode
        token_ids = context[0].tolist()[1:]  # remove start token
        name = "".join(itos[t] for t in token_ids)
        results.append(name)
        # Print with numeric prefix
        print(f"{i}. {name.capitalize()}")
    return results
