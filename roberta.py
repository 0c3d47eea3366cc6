"""RoBERTa: BERT's encoder, pretrained better.

Liu, Ott, Goyal, Du, Joshi, Chen, Levy, Lewis, Zettlemoyer, Stoyanov, "RoBERTa: A Robustly
Optimized BERT Pretraining Approach", 2019. https://arxiv.org/abs/1907.11692

The paper's finding is that BERT was undertrained, not that it needed a new architecture.
What RoBERTa changes, and why:
  no NSP            next-sentence prediction did not help (removing it matched or improved
                    downstream scores), so the only objective is masked language modelling
  dynamic masking   a new random mask each time a sequence is seen, not one fixed at preprocessing
  FULL-SENTENCES    inputs are packed with contiguous sentences up to 512 tokens, crossing
                    document boundaries (with a separator), so no batch slot is wasted on padding
  more compute      8k-sequence batches, 10x the data (160GB of text), longer training
  byte-level BPE    a 50K GPT-2-style vocabulary of bytes: nothing is ever <unk>
The encoder is BERT's, unchanged. What differs in the checkpoint: positions start after the
padding index (padding_idx + 1, computed from input_ids != pad, and padding keeps position
padding_idx, as fairseq does), hence max_position_embeddings = 514 for 512 tokens;
type_vocab_size = 1 (no segment B); layer_norm_eps = 1e-5; pad_token_id = 1
(<s>=0 <pad>=1 </s>=2 <unk>=3); the MLM head is `lm_head` and the classifier reads <s>
through its own dense + tanh layer instead of a pooler.

Parameter names are those of Hugging Face `transformers`, so `from_pretrained` reads a
published checkpoint directory and `save_pretrained` writes one that `transformers` loads
with the same outputs. The blocks shared with bert.py are copied under `# Copied from`
markers, checked by tests/test_copies.py. This file depends only on torch, safetensors and
`kernels`.

Padded batches run on their real tokens only and `document_ids` packs several documents in a row,
as in bert.py (see its docstring): `RobertaModel.forward(input_ids, attention_mask=None,
token_type_ids=None, position_ids=None, document_ids=None)`; config.unpad = False keeps the dense path.
Packed, each document's positions restart at padding_idx + 1.

The efficient-BERT options (pre_layernorm, norm_type, use_bias, ffn_type) and the `crammed` presets
are bert.py's (see its docstring); norm_type also reaches the embeddings' and lm_head's norms.
"""
import json
import os
import pickle
import re
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import attention, attention_varlen, cross_entropy

TOKENIZER_KIND = "bpe"                # tokenizer.py kind this family is pretrained with
DEFAULT_OBJECTIVE = "mlm"             # train.py --objective; PRETRAINING_CLASSES (at the end) lists all
PACKED_SEQUENCES = True               # train.py asks data.py for FULL-SENTENCES packing
POSITION_OFFSET = 2                   # positions 0..padding_idx never hold a token: seq_len <= max_pos - 2


# ----------------------------------------------------------------------------- config

# Copied from bert.OPTION_VALUES
OPTION_VALUES = {"pre_layernorm": (False, True), "norm_type": ("layernorm", "rmsnorm"),
                 "use_bias": (True, False), "ffn_type": ("mlp", "geglu")}
# Copied from bert.CRAMMED
CRAMMED = dict(pre_layernorm=True, norm_type="layernorm", use_bias=False, ffn_type="geglu",
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@dataclass
class RobertaConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 514            # 512 tokens + padding_idx + 1
    type_vocab_size: int = 1
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1
    classifier_dropout: Optional[float] = None   # None = hidden_dropout_prob
    num_labels: int = 2                           # for RobertaForSequenceClassification; 1 = regression
    unpad: bool = True                            # run padded batches on their real tokens only
    # efficient-BERT options (see bert.py's docstring); the defaults are the published architecture
    pre_layernorm: bool = False                   # norm before each sublayer, and a final norm
    norm_type: str = "layernorm"                  # "layernorm" | "rmsnorm"
    use_bias: bool = True                         # biases in the layers' linear maps and norms
    ffn_type: str = "mlp"                         # "mlp" | "geglu"

    model_type: ClassVar[str] = "roberta"
    # base and large as published; tiny and mini are CPU-sized, named as BERT's
    PRESETS: ClassVar[dict] = {
        "tiny":   dict(num_hidden_layers=2,  hidden_size=128,  num_attention_heads=2,  intermediate_size=512),
        "mini":   dict(num_hidden_layers=4,  hidden_size=256,  num_attention_heads=4,  intermediate_size=1024),
        "base":   dict(num_hidden_layers=12, hidden_size=768,  num_attention_heads=12, intermediate_size=3072),
        "large":  dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
        # Cramming's architecture (Geiping & Goldstein 2022) at RoBERTa's base sizes; see bert.py's PRESETS
        "crammed":      dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=1536,
                             **CRAMMED),
        "crammed-tiny": dict(num_hidden_layers=2,  hidden_size=128, num_attention_heads=2,  intermediate_size=256,
                             **CRAMMED),
    }

    # Copied from bert.BertConfig.__post_init__
    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        for name, allowed in OPTION_VALUES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(map(repr, allowed))}")

    # Copied from bert.BertConfig.from_preset
    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.model_type} preset {name!r}; choose one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    # Copied from bert.BertConfig.from_dict
    @classmethod
    def from_dict(cls, d):
        """Build from a config.json dict, ignoring the keys this file does not use. Another family's
        model_type is refused; the sizes that shape the weights are required (a default would build
        another model); every value must have its field's type."""
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"it is for model_type {d.get('model_type')!r}, not {cls.model_type!r}: "
                             f"load it with the {d.get('model_type')}.py file instead")
        sizes = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if any(k not in d for k in sizes):
            raise ValueError(f"it lacks {', '.join(k for k in sizes if k not in d)} (the sizes of the weights)")
        types = {f.name: f.type for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in types}
        if "id2label" in d and "num_labels" not in d:
            kw["num_labels"] = len(d["id2label"])
        allowed = {bool: bool, int: int, float: (int, float), str: str, Optional[float]: (int, float, type(None)),
                   Optional[int]: (int, type(None))}
        wrong = [f"{k} should be {getattr(types[k], '__name__', types[k])}, not {v!r}" for k, v in kw.items()
                 if (isinstance(v, bool) and types[k] is not bool) or not isinstance(v, allowed.get(types[k], object))]
        wrong += [f"{k} should be positive, not {kw[k]}" for k in sizes if not wrong and kw[k] < 1]
        if wrong:
            raise ValueError("; ".join(wrong))
        return cls(**kw)

    # Copied from bert.BertConfig.to_dict
    def to_dict(self):
        d = asdict(self)
        d["model_type"] = self.model_type
        d["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
        d["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        del d["num_labels"]
        del d["unpad"]                  # how to run, not what the checkpoint is: not in config.json
        for name, values in OPTION_VALUES.items():
            if d[name] == values[0]:    # a published architecture's config.json stays as transformers writes it
                del d[name]
        return d

    # Copied from bert.BertConfig.hf_incompatible
    def hf_incompatible(self):
        """The options set here that transformers' classes cannot express, as 'name=value' strings."""
        return [f"{name}={getattr(self, name)!r}" for name, values in OPTION_VALUES.items()
                if getattr(self, name) != values[0]]


# ----------------------------------------------------------------------------- outputs

# Copied from bert.Output
class Output(NamedTuple):
    loss: Optional[torch.Tensor]       # scalar, None without labels
    logits: torch.Tensor               # MLM: (N, V) at the N predicted positions, or (B, T, V) without labels
    metrics: dict                      # detached scalars, e.g. {"mlm_acc": ...}
    seq_relationship_logits: Optional[torch.Tensor] = None  # (B, 2), NSP


# Copied from bert._mlm_loss
def _mlm_loss(logits, labels, metrics):
    """Cross-entropy over the predicted positions; logits (N, V), labels (N,). kernels.cross_entropy is
    F.cross_entropy with one (N, V) buffer instead of three."""
    loss = cross_entropy(logits, labels)
    metrics["mlm_loss"] = loss.detach()
    # = (argmax == label), up to ties; amax is ~10x faster than argmax on a CPU (no index to track)
    logits = logits.detach()
    metrics["mlm_acc"] = (logits.gather(-1, labels[:, None]).squeeze(-1) >= logits.amax(-1)).float().mean()
    return loss


# ----------------------------------------------------------------------------- blocks

# Copied from bert.ACT2FN
ACT2FN = {"gelu": F.gelu, "relu": F.relu,
          "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
          "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


# Copied from bert.make_norm
def make_norm(config, size, bias=True):
    """The norm over the last dim, of `size` features: LayerNorm, or RMSNorm (a weight, no bias)."""
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(size, eps=config.layer_norm_eps)
    return nn.LayerNorm(size, eps=config.layer_norm_eps, bias=bias)


# Copied from bert.Unpadded
class Unpadded(NamedTuple):
    """Where the real tokens of a (B, T) batch are, for the unpadded (total, H) layout."""
    indices: torch.Tensor         # (total,) int64: flat index b * T + t of each real token, in order
    cu_seqlens: torch.Tensor      # (S+1,) int32: sequence s is rows cu_seqlens[s]:cu_seqlens[s+1]
    max_seqlen: int               # the longest sequence
    starts: torch.Tensor          # (B, T) bool: True at the first token of each sequence


# Copied from bert.unpad
def unpad(attention_mask, document_ids=None):
    """The sequences of a batch: the runs of real tokens in each row, split where document_ids changes.

    attention_mask: (B, T) bool, True = real; document_ids: (B, T) int or None. A sequence never
    crosses a row, a padded position or a change of document id.
    """
    real = attention_mask                                                     # (B, T)
    new = torch.ones_like(real)
    new[:, 1:] = ~real[:, :-1]                                                # first column, or after padding
    if document_ids is not None:
        new[:, 1:] |= document_ids[:, 1:] != document_ids[:, :-1]
    starts = real & new                                                       # (B, T)
    indices = real.flatten().nonzero().squeeze(1)                             # (total,) graph break here
    first = starts.flatten()[indices].nonzero().squeeze(1)                    # (S,) row where each sequence starts
    if first.numel() == 0:                                                    # no real token at all
        first = indices.new_zeros(1)
    cu_seqlens = torch.cat([first, first.new_tensor([indices.numel()])]).to(torch.int32)   # (S+1,)
    max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return Unpadded(indices, cu_seqlens, max_seqlen, starts)


# Copied from bert.pad
def pad(x, indices, B, T):
    """(total, H) rows back to (B, T, H), zeros at the padded positions."""
    out = x.new_zeros(B * T, x.shape[-1]).index_copy(0, indices, x)          # (B*T, H)
    return out.view(B, T, -1)                                                 # (B, T, H)


class RobertaEmbeddings(nn.Module):
    """BERT's embeddings, except the position ids: they count from padding_idx + 1, and padding keeps padding_idx."""

    def __init__(self, config):
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = make_norm(config, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        if position_ids is None:
            position_ids = self.make_position_ids(input_ids)                   # (B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids)                                    # (B, T, H)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))                                  # (B, T, H)

    def make_position_ids(self, input_ids, starts=None):
        """padding_idx + 1, + 2, ... over the real tokens; padding_idx at padding (fairseq's make_positions).

        Counting only real tokens makes a row's positions independent of its padding, on either side.
        With `starts` (B, T) bool, True at the first token of each packed document, the count restarts there.
        """
        T, most = input_ids.shape[1], self.position_embeddings.num_embeddings - self.padding_idx - 1
        if T > most:
            raise ValueError(f"sequence length {T} exceeds {most}: max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings} minus padding_idx + 1")
        real = (input_ids != self.padding_idx).long()                           # (B, T)
        count = torch.cumsum(real, dim=1)                                       # (B, T)
        if starts is not None:                                                  # count from each document's start
            count = count - torch.cummax((count - 1) * starts, dim=1).values
        return count * real + self.padding_idx                                  # (B, T)


# Copied from bert.BertSelfAttention with Bert->Roberta
class RobertaSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.key = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.value = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x, attention_mask=None):
        """x (B, T, H) with attention_mask (B, T) or None; or x (total, H) with an Unpadded layout."""
        p = self.dropout_p if self.training else 0.0
        if isinstance(attention_mask, Unpadded):
            N, H = x.shape
            q = self.query(x).view(N, self.num_heads, self.head_dim)                 # (N, nh, hd)
            k = self.key(x).view(N, self.num_heads, self.head_dim)                   # (N, nh, hd)
            v = self.value(x).view(N, self.num_heads, self.head_dim)                 # (N, nh, hd)
            y = attention_varlen(q, k, v, attention_mask.cu_seqlens, attention_mask.max_seqlen, dropout_p=p)
            return y.reshape(N, H)                                                    # (N, H)
        B, T, H = x.shape
        q = self.query(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.key(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)    # (B, nh, T, hd)
        v = self.value(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        y = attention(q, k, v, key_padding_mask=attention_mask, dropout_p=p)         # (B, nh, T, hd)
        return y.transpose(1, 2).reshape(B, T, H)                                     # (B, T, H)


# Copied from bert.BertSelfOutput with Bert->Roberta
class RobertaSelfOutput(nn.Module):
    """Output projection + residual, and the attention sublayer's norm: after the sum (post-LN), or
    applied by RobertaAttention to the sublayer's input (pre-LN)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.LayerNorm = make_norm(config, config.hidden_size, bias=config.use_bias)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pre_layernorm = config.pre_layernorm

    def forward(self, h, x):
        if self.pre_layernorm:
            return x + self.dropout(self.dense(h))                              # (B, T, H), pre-LN
        return self.LayerNorm(x + self.dropout(self.dense(h)))                  # (B, T, H), post-LN


# Copied from bert.BertAttention with Bert->Roberta
class RobertaAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = RobertaSelfAttention(config)
        self.output = RobertaSelfOutput(config)

    def forward(self, x, attention_mask=None):
        h = self.output.LayerNorm(x) if self.output.pre_layernorm else x      # pre-LN: attend to LN(x)
        return self.output(self.self(h, attention_mask), x)                    # (B, T, H)


# Copied from bert.BertIntermediate with Bert->Roberta
class RobertaIntermediate(nn.Module):
    """The FFN's up projection: act(x W), or with ffn_type "geglu" act(x W_a) * (x W_b), W_a and W_b
    stacked in one `dense` of 2 x intermediate_size outputs (one matmul)."""

    def __init__(self, config):
        super().__init__()
        self.gated = config.ffn_type == "geglu"
        width = 2 * config.intermediate_size if self.gated else config.intermediate_size
        self.dense = nn.Linear(config.hidden_size, width, bias=config.use_bias)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x):
        if self.gated:
            a, b = self.dense(x).chunk(2, dim=-1)                               # (B, T, I) each
            return self.act(a) * b                                              # (B, T, I)
        return self.act(self.dense(x))                                          # (B, T, I)


# Copied from bert.BertOutput with Bert->Roberta
class RobertaOutput(nn.Module):
    """The FFN's down projection + residual, and the FFN sublayer's norm (placed as in RobertaSelfOutput)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        self.LayerNorm = make_norm(config, config.hidden_size, bias=config.use_bias)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.pre_layernorm = config.pre_layernorm

    def forward(self, h, x):
        if self.pre_layernorm:
            return x + self.dropout(self.dense(h))                              # (B, T, H), pre-LN
        return self.LayerNorm(x + self.dropout(self.dense(h)))                  # (B, T, H), post-LN


# Copied from bert.BertLayer with Bert->Roberta
class RobertaLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = RobertaAttention(config)
        self.intermediate = RobertaIntermediate(config)
        self.output = RobertaOutput(config)

    def forward(self, x, attention_mask=None, keep=None):
        """keep (B, T) bool (or (total,) unpadded), optional: the only positions anyone reads after this
        layer; the feed-forward runs on them alone and the others come back as zeros."""
        x = self.attention(x, attention_mask)                                   # (B, T, H)
        if keep is not None:
            return torch.zeros_like(x).index_put((keep,), self.feed_forward(x[keep]))   # (N, H) into (B, T, H)
        return self.feed_forward(x)                                             # (B, T, H)

    def feed_forward(self, x):
        h = self.output.LayerNorm(x) if self.output.pre_layernorm else x      # pre-LN: the FFN reads LN(x)
        return self.output(self.intermediate(h), x)                            # (..., H)


# Copied from bert.BertEncoder with Bert->Roberta
class RobertaEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([RobertaLayer(config) for _ in range(config.num_hidden_layers)])
        # pre-LN leaves the residual stream unnormalised: one norm after the last layer, for the heads
        self.final_layer_norm = (make_norm(config, config.hidden_size, bias=config.use_bias)
                                 if config.pre_layernorm else None)

    def forward(self, x, attention_mask=None, keep=None):
        """keep: the positions the heads read (see RobertaLayer); the last layer computes only those."""
        for i, layer in enumerate(self.layer):
            x = layer(x, attention_mask, keep if i == len(self.layer) - 1 else None)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x                                                                # (B, T, H)


# Copied from bert.BertPooler with Bert->Roberta,[CLS]-><s>
class RobertaPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))                                 # (B, H), from <s>


class RobertaLMHead(nn.Module):
    """MLM head: dense, GELU, LayerNorm, then the word embeddings (tied, passed in) as the output matrix, + a bias."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = make_norm(config, config.hidden_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, word_embeddings):
        x = self.layer_norm(F.gelu(self.dense(x)))                             # (..., H); GELU whatever hidden_act
        return F.linear(x, word_embeddings, self.bias)                         # (..., V)


class RobertaClassificationHead(nn.Module):
    """Sentence classifier on the <s> token: dropout, dense, tanh, dropout, out_proj (a pooler of its own)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, h):
        x = self.dropout(h[:, 0])                                               # (B, H), from <s>
        x = self.dropout(torch.tanh(self.dense(x)))                            # (B, H)
        return self.out_proj(x)                                                 # (B, num_labels)


# ----------------------------------------------------------------------------- loading and saving

# Copied from bert._atomic_write
def _atomic_write(path, write):
    """write(tmp_path) then rename over `path`: a crash leaves the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# Copied from bert.CheckpointError
class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded, or is refused: the message names the file and the problem."""


# Copied from bert._load_weights
def _load_weights(file):
    """{name: tensor} from one weights file. A pickle goes through torch.load(weights_only=True), whose
    unpickler builds tensors and plain containers only: a file that would call anything else is refused."""
    from safetensors.torch import load_file
    try:
        if file.suffix == ".safetensors":
            state = load_file(file)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        call = re.search(r"GLOBAL ([\w.]+)", str(e))
        if call:
            raise CheckpointError(f"{file} is refused: loading it would call {call[1]}, i.e. run code, where a "
                                  "weights file holds only tensors. Do not load it unless you trust its source "
                                  "(then convert it to model.safetensors)") from None
        reason = next((line for line in str(e).splitlines() if "Unsupported" in line), str(e).split("\n")[0])
        if isinstance(e, pickle.UnpicklingError):
            raise CheckpointError(f"{file} is refused: it is not plain tensors that torch.load(weights_only=True) "
                                  f"can read ({reason.strip()}); it may be corrupt, or hold objects whose "
                                  "unpickling could run code") from None
        raise CheckpointError(f"{file} is corrupt or truncated ({type(e).__name__}: {reason[:200]}); "
                              "save or download it again") from None
    if not (isinstance(state, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state dict of named tensors")
    return state


# Copied from bert._read_state_dict
def _read_state_dict(path):
    """Weights of an HF checkpoint directory: model.safetensors (or its shards), else pytorch_model.bin."""
    path = Path(path)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (path / single).exists():
            return _load_weights(path / single)
        if (path / index_name).exists():
            try:
                index = json.loads((path / index_name).read_text(encoding="utf-8"))
                shards = sorted(set(index["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckpointError(f"{path / index_name} is not a shard index with a weight_map "
                                      f"({type(e).__name__}: {e})") from None
            missing = [s for s in shards if not (path / s).is_file()]
            if missing:
                raise CheckpointError(f"{path / index_name} names shards that are not there: {missing}")
            return {k: v for shard in shards for k, v in _load_weights(path / shard).items()}
    raise FileNotFoundError(f"no weights in {path}: expected model.safetensors or pytorch_model.bin")


class RobertaPreTrainedModel(nn.Module):
    """Weight init, and reading/writing the Hugging Face checkpoint layout (the methods are BERT's)."""
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    _fresh_keys = ("pooler.",)  # may be missing, initialised fresh: no RoBERTa objective trains the pooler
    _dropped_keys = ("position_ids", "token_type_ids", "lm_head.decoder.")  # buffers and tied copies

    # Copied from bert.BertPreTrainedModel._init_weights
    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:                     # RMSNorm and bias=False have none
                nn.init.zeros_(module.bias)

    # Copied from bert.BertPreTrainedModel.num_parameters
    def num_parameters(self, exclude_embeddings=False):
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
        return n

    # Copied from bert.BertPreTrainedModel.check_hf_compatible
    def check_hf_compatible(self):
        """Raise a ValueError naming the config options that transformers' class of this name cannot express."""
        options = self.config.hf_incompatible()
        if options:
            raise ValueError(f"{', '.join(options)} cannot be expressed in transformers' {type(self).__name__}: "
                             "save_pretrained writes a checkpoint that only our from_pretrained loads")

    # Copied from bert.BertPreTrainedModel.save_pretrained
    def save_pretrained(self, path):
        """config.json + model.safetensors. A config with an efficient-BERT option (pre_layernorm, ...)
        is saved too, marked "transformers_compatible": false, and said once per model."""
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {**self.config.to_dict(), "architectures": [type(self).__name__]}
        options = self.config.hf_incompatible()
        if options:
            config["transformers_compatible"] = False
            if not getattr(self, "_said_hf_incompatible", False):
                print(f"{type(self).__name__}: {', '.join(options)} cannot be expressed in transformers' "
                      f"{type(self).__name__}: the checkpoint loads with our from_pretrained only "
                      '(config.json says "transformers_compatible": false)')
                self._said_hf_incompatible = True
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        _atomic_write(path / "model.safetensors", lambda f: save_file(sd, f, metadata={"format": "pt"}))
        _atomic_write(path / "config.json", lambda f: Path(f).write_text(json.dumps(config, indent=2) + "\n"))

    # Copied from bert.BertPreTrainedModel.from_pretrained with bert->roberta,predictions.decoder.bias->lm_head.decoder.bias
    @classmethod
    def from_pretrained(cls, path, strict=True, **config_overrides):
        """Load a Hugging Face checkpoint directory (ours or published) into this class.

        A checkpoint of the bare encoder (keys without the `roberta.` prefix) loads into a head
        model and vice versa. Missing or unexpected weights are an error that lists them;
        strict=False loads what matches (use it to drop or add heads). A task head that the
        checkpoint lacks (the classifier) is initialised fresh, and said once.

        Another family's checkpoint (config.json's model_type) is refused, strict=False included:
        the families differ in more than their weights' names (RoBERTa offsets its positions,
        ALBERT shares layers, ELECTRA projects its embeddings), so a partial load would compute
        something else without a word. A file that cannot be read (not JSON, truncated, corrupt,
        missing sizes, wrong types or shapes) raises CheckpointError, a ValueError that names it;
        a pickle is read only by torch.load(weights_only=True), and one that would run code is refused.
        """
        path, file = Path(path), Path(path) / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{path} is not a checkpoint directory: it has no config.json")
        try:
            config_dict = json.loads(file.read_text(encoding="utf-8"))
        except ValueError as e:                                              # not JSON, or not UTF-8
            raise CheckpointError(f"{file} is not valid JSON ({e})") from None
        if not isinstance(config_dict, dict):
            raise CheckpointError(f"{file} holds a JSON {type(config_dict).__name__}, not an object of settings")
        try:
            config = cls.config_class.from_dict({**config_dict, **config_overrides})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{file} cannot be loaded into {cls.__name__}: {e}") from None
        weights = _read_state_dict(path)                                     # all read, or an error
        model = cls(config)
        state = {}
        for k, v in weights.items():
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            if k.endswith("lm_head.decoder.bias"):                       # old checkpoints: the tied bias
                k = k.replace("decoder.bias", "bias")
                if k in state:
                    continue
            if not any(d in k for d in cls._dropped_keys):
                state[k] = v
        own = model.state_dict()
        prefix = cls.base_model_prefix + "."
        has_base = any(k.startswith(prefix) for k in own)
        if has_base and not any(k.startswith(prefix) for k in state):      # bare encoder -> head model
            state = {prefix + k: v for k, v in state.items()}
        elif not has_base and any(k.startswith(prefix) for k in state):    # head checkpoint -> bare encoder
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        # the weights of a head this class does not have (the MLM head, when fine-tuning) are not used
        unused = [k for k in unexpected if has_base and not k.startswith(prefix)]
        unexpected = [k for k in unexpected if k not in unused]
        fresh = [k for k in missing if k.startswith(cls._fresh_keys)] if cls._fresh_keys else []
        missing = [k for k in missing if k not in fresh]
        if strict and (missing or unexpected):
            raise CheckpointError(f"checkpoint {path} does not match {cls.__name__}:\n"
                                  f"  missing: {missing or 'none'}\n  unexpected: {unexpected or 'none'}\n"
                                  "Pass strict=False to load the weights that match.")
        wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items() if k in own and v.shape != own[k].shape]
        if wrong:
            raise CheckpointError(f"checkpoint {path} has weights of the wrong shape for {cls.__name__} "
                                  "(a different vocabulary or size?):\n  " + "\n  ".join(wrong))
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
        if fresh or (not strict and missing):
            print(f"{cls.__name__}: initialised fresh (not in {path}): "
                  f"{sorted({k.rsplit('.', 1)[0] for k in fresh + missing})}")
        if unused:
            print(f"{cls.__name__}: not used (another head's weights): {sorted({k.rsplit('.', 1)[0] for k in unused})}")
        return model


# ----------------------------------------------------------------------------- models

# Copied from bert.BertModel with Bert->Roberta,[CLS]-><s>
class RobertaModel(RobertaPreTrainedModel):
    """The encoder: token ids -> last hidden state (B, T, H). `pooler` gives the <s> vector."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.embeddings = RobertaEmbeddings(config)
        self.encoder = RobertaEncoder(config)
        self.pooler = RobertaPooler(config) if add_pooling_layer else None
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, document_ids=None,
                keep=None):
        """(B, T, H). document_ids (B, T): packed documents, see the module docstring. keep (B, T) bool: the
        only positions the caller will read (in pretraining, the masked ones and <s>); the last layer's
        feed-forward skips the others, whose outputs are zeros."""
        # compiled, the dense path always: unpadding's nonzero() / .item() would break the graph
        dense = attention_mask is None or not self.config.unpad or torch.compiler.is_compiling()
        if attention_mask is not None:
            attention_mask = attention_mask.bool()                             # (B, T), True = real token
            # no padding at all (as packed rows): attend with no mask. Asked only where unpadding asks
            # anyway (on a GPU, bool() waits for the device)
            if not dense and bool(attention_mask.all()):
                attention_mask, dense = None, True
        if document_ids is None and dense:
            x = self.embeddings(input_ids, token_type_ids, position_ids)        # (B, T, H)
            return self.encoder(x, attention_mask, keep)                        # (B, T, H)
        # the real tokens only: gather the ids, run the layers on (total, H), scatter the result back
        B, T = input_ids.shape
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        layout = unpad(attention_mask, document_ids)
        if position_ids is None:
            position_ids = self.embeddings.make_position_ids(input_ids, None if document_ids is None else layout.starts)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        ids = [t.expand(B, T).reshape(-1)[layout.indices] for t in (input_ids, token_type_ids, position_ids)]
        x = self.embeddings(*ids)                                               # (total, H)
        keep = None if keep is None else keep.reshape(-1)[layout.indices]       # (total,)
        return pad(self.encoder(x, layout, keep), layout.indices, B, T)         # (B, T, H)


class RobertaForMaskedLM(RobertaPreTrainedModel):
    """RoBERTa's pretraining model: MLM only, no pooler, no NSP."""
    _dropped_keys = RobertaPreTrainedModel._dropped_keys + ("pooler.",)   # published checkpoints carry an unused pooler

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        predicted = None if labels is None else labels != -100                 # (B, T): what the head reads
        h = self.roberta(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=predicted)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h, labels = h[predicted], labels[predicted]                        # (N, H), (N,): only masked tokens
        logits = self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)  # (N, V) or (B, T, V)
        if labels is not None:
            loss = _mlm_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


class RobertaForSequenceClassification(RobertaPreTrainedModel):
    """<s> -> RobertaClassificationHead. num_labels = 1 is regression (MSE), else cross-entropy."""
    _fresh_keys = ("classifier.",)
    _dropped_keys = RobertaPreTrainedModel._dropped_keys + ("pooler.", "lm_head.")  # fine-tune a pretrained MLM

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        h = self.roberta(input_ids, attention_mask, token_type_ids, document_ids=document_ids)  # (B, T, H)
        logits = self.classifier(h)                                             # (B, num_labels)
        metrics, loss = {}, None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
                metrics["acc"] = (logits.detach().argmax(-1) == labels).float().mean()
        return Output(loss, logits, metrics)


# what train.py pretrains for each --objective
PRETRAINING_CLASSES = {"mlm": RobertaForMaskedLM}
