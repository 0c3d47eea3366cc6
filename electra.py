"""ELECTRA: pretraining a text encoder as a discriminator rather than a generator.

Clark, Luong, Le, Manning, "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than
Generators", ICLR 2020. https://arxiv.org/abs/2003.10555
Reference code: https://github.com/google-research/electra

What ELECTRA changes relative to BERT: the objective, replaced-token detection (RTD).
  generator      a small masked language model (hidden size, heads and FFN a fraction of the
                 discriminator's, as many layers) predicts the masked tokens, and a token is SAMPLED
                 from its distribution at each masked position
  discriminator  the encoder we keep: it reads the text with the samples in place and predicts, for
                 EVERY token, whether it was replaced. BERT learns from the ~15% masked positions;
                 here every token gives a signal, so ELECTRA learns more per step and per FLOP.
  loss           generator MLM loss + 50 x discriminator BCE. No gradient flows through the
                 sampling: the generator is trained by its MLM loss alone (not adversarially).
  sharing        the two share the token, position and type embeddings (and their LayerNorm).
  temperature    samples come from softmax(logits / temperature), 1 in the paper. The released code
                 has the same knob; the CPU-sized `tiny` preset uses 3, because in a few minutes the
                 small generator learns as fast as the discriminator and its temperature-1 samples
                 are then as plausible as the discriminator can judge: it would stay at "all original".
  afterwards     the generator is thrown away; the discriminator is fine-tuned.
The encoder is BERT's (post-LN layers, GELU), with one addition: the embeddings have their own
size E = embedding_size, and `embeddings_project` maps E -> H when the two differ (ELECTRA-small:
E = 128, H = 256). There is no pooler: a classifier reads the [CLS] vector through dense + GELU.

Parameter names are those of Hugging Face `transformers` (ElectraForPreTraining = the discriminator,
ElectraForMaskedLM = the generator), so checkpoints move both ways with the same outputs. A run
directory holds the discriminator at its root and the generator in generator/. This file depends
only on torch, safetensors and `kernels`.

Padded batches run on their real tokens only and `document_ids` packs several documents in a row,
as in bert.py (see its docstring): `ElectraModel.forward(input_ids, attention_mask=None,
token_type_ids=None, position_ids=None, document_ids=None)`; config.unpad = False keeps the dense path.

The efficient-BERT options (pre_layernorm, norm_type, use_bias, ffn_type) and the `crammed` presets
are bert.py's (see its docstring); the generator gets the discriminator's options.
"""
import json
import os
import pickle
import re
import tempfile
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import attention, attention_varlen, cross_entropy

TOKENIZER_KIND = "wordpiece"          # tokenizer.py kind this family is pretrained with
DEFAULT_OBJECTIVE = "rtd"             # train.py --objective; PRETRAINING_CLASSES (at the end) lists all
# The masking data.py applies before a batch reaches the model. ELECTRA's pretrain_helpers.mask():
# 15% of the tokens are chosen; 85% of those become [MASK], the other 15% stay as they are, none
# is replaced by a random token (the generator's samples play that part).
MLM_MASKING = dict(mlm_probability=0.15, mask_ratio=0.85, random_ratio=0.0)


# ----------------------------------------------------------------------------- config

# Copied from bert.OPTION_VALUES
OPTION_VALUES = {"pre_layernorm": (False, True), "norm_type": ("layernorm", "rmsnorm"),
                 "use_bias": (True, False), "ffn_type": ("mlp", "geglu")}
# Copied from bert.CRAMMED
CRAMMED = dict(pre_layernorm=True, norm_type="layernorm", use_bias=False, ffn_type="geglu",
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@dataclass
class ElectraConfig:
    vocab_size: int = 30522
    embedding_size: int = 128                     # E: word/position/type embeddings, and the generator's output
    hidden_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: Optional[float] = None   # None = hidden_dropout_prob
    num_labels: int = 2                           # for ElectraForSequenceClassification; 1 = regression
    unpad: bool = True                            # run padded batches on their real tokens only
    # efficient-BERT options (see bert.py's docstring); the defaults are the published architecture
    pre_layernorm: bool = False                   # norm before each sublayer, and a final norm
    norm_type: str = "layernorm"                  # "layernorm" | "rmsnorm"
    use_bias: bool = True                         # biases in the layers' linear maps and norms
    ffn_type: str = "mlp"                         # "mlp" | "geglu"
    # pretraining (our fields; transformers ignores them in config.json)
    generator_size: float = 0.25                  # generator hidden size, heads and FFN as a fraction of these
    generator_weight: float = 1.0                 # loss = generator_weight * MLM + discriminator_weight * RTD
    discriminator_weight: float = 50.0
    temperature: float = 1.0                      # replacements drawn from softmax(generator logits / temperature)
    # the tokenizer's size when vocab_size was rounded up past it (to a multiple of 64, for the GPU's matrix
    # units): ids from here to vocab_size are never targets and never sampled. None = vocab_size
    tokenizer_vocab_size: Optional[int] = None

    model_type: ClassVar[str] = "electra"
    # small/base/large: the paper's Table 6. tiny/mini: CPU-sized, named as BERT's; tiny, for minutes-long
    # runs, samples at temperature 3 (see the module docstring)
    PRESETS: ClassVar[dict] = {
        "tiny":  dict(num_hidden_layers=2,  hidden_size=128,  embedding_size=128,  num_attention_heads=2,
                      intermediate_size=512,  generator_size=1 / 4, temperature=3.0),
        "mini":  dict(num_hidden_layers=4,  hidden_size=256,  embedding_size=128,  num_attention_heads=4,
                      intermediate_size=1024, generator_size=1 / 4),
        "small": dict(num_hidden_layers=12, hidden_size=256,  embedding_size=128,  num_attention_heads=4,
                      intermediate_size=1024, generator_size=1 / 4),
        "base":  dict(num_hidden_layers=12, hidden_size=768,  embedding_size=768,  num_attention_heads=12,
                      intermediate_size=3072, generator_size=1 / 3),
        "large": dict(num_hidden_layers=24, hidden_size=1024, embedding_size=1024, num_attention_heads=16,
                      intermediate_size=4096, generator_size=1 / 4),
        # Cramming's architecture (Geiping & Goldstein 2022) on ELECTRA-base's sizes (E = H, a 1/3 generator,
        # which gets the same options); see bert.py's PRESETS. Cramming trained BERT's MLM, not RTD.
        "crammed":      dict(num_hidden_layers=12, hidden_size=768, embedding_size=768, num_attention_heads=12,
                             intermediate_size=1536, generator_size=1 / 3, **CRAMMED),
        "crammed-tiny": dict(num_hidden_layers=2,  hidden_size=128, embedding_size=128, num_attention_heads=2,
                             intermediate_size=256, generator_size=1 / 4, **CRAMMED),
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

    def generator_config(self):
        """The generator: hidden size, heads and FFN scaled by generator_size; same layers, E and vocabulary."""
        f = self.generator_size
        hidden, heads = round(self.hidden_size * f), max(1, round(self.num_attention_heads * f))
        if not 0 < f <= 1 or hidden % heads:
            raise ValueError(f"generator_size={f} gives a generator of hidden size {hidden} with {heads} heads; "
                             "choose a fraction in (0, 1] that divides hidden size and heads evenly")
        return replace(self, hidden_size=hidden, num_attention_heads=heads,
                       intermediate_size=round(self.intermediate_size * f), generator_size=1.0)


# ----------------------------------------------------------------------------- outputs and losses

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


def _rtd_loss(logits, is_replaced, attention_mask, metrics):
    """Binary cross-entropy over the real tokens: was each one replaced? logits, is_replaced: (B, T)."""
    real = attention_mask.bool() if attention_mask is not None else torch.ones_like(logits, dtype=torch.bool)
    logits, is_replaced = logits[real].float(), is_replaced[real].bool()         # (M,), (M,): real tokens only
    loss = F.binary_cross_entropy_with_logits(logits, is_replaced.float())
    said_replaced = logits.detach() > 0                                          # (M,) the verdicts
    hits = (said_replaced & is_replaced).sum()
    metrics["rtd_loss"] = loss.detach()
    metrics["rtd_acc"] = (said_replaced == is_replaced).float().mean()
    metrics["rtd_precision"] = hits / said_replaced.sum().clamp(min=1)           # of the tokens called replaced
    metrics["rtd_recall"] = hits / is_replaced.sum().clamp(min=1)                # of the replaced tokens
    metrics["replaced_frac"] = is_replaced.float().mean()
    return loss


def gumbel_sample(logits, generator=None, temperature=1.0):
    """One id per row, drawn from softmax(logits / temperature) by the Gumbel-max trick; float32, no
    gradient. (N, V) -> (N,)"""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (samples come from softmax(logits / temperature)); got {temperature}")
    noise = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)   # (N, V), one buffer:
    noise.uniform_(generator=generator)                                           # uniform in [0, 1),
    noise.add_(1e-9).log_().neg_().add_(1e-9).log_().neg_()                       # -log(-log u): Gumbel(0, 1),
    noise.add_(logits.detach(), alpha=1 / temperature)                            # + logits / T,
    return noise.max(-1).indices                                                  # argmax (max: 2x faster); (N,)


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


# Copied from bert.BertEmbeddings with Bert->Electra,hidden_size->embedding_size
class ElectraEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = make_norm(config, config.embedding_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids=None, position_ids=None):
        """input_ids (B, T), or (total,) real tokens gathered by the model (with all three ids given)."""
        if position_ids is None:
            position_ids = self.make_position_ids(input_ids)                   # (1, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids)                                    # (B, T, H)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))                                  # (B, T, H)

    def make_position_ids(self, input_ids, starts=None):
        """0, 1, 2, ... along the rows; with `starts` (B, T) bool (True at the first token of each
        packed document), restarting at 0 at each document."""
        T = input_ids.shape[1]
        if T > self.position_embeddings.num_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}")
        position_ids = torch.arange(T, device=input_ids.device)[None]          # (1, T)
        if starts is not None:
            first = torch.cummax(position_ids * starts, dim=1).values          # (B, T) where each document starts
            position_ids = position_ids - first
        return position_ids                                                     # (1, T) or (B, T)


# Copied from bert.BertSelfAttention with Bert->Electra
class ElectraSelfAttention(nn.Module):
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


# Copied from bert.BertSelfOutput with Bert->Electra
class ElectraSelfOutput(nn.Module):
    """Output projection + residual, and the attention sublayer's norm: after the sum (post-LN), or
    applied by ElectraAttention to the sublayer's input (pre-LN)."""

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


# Copied from bert.BertAttention with Bert->Electra
class ElectraAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = ElectraSelfAttention(config)
        self.output = ElectraSelfOutput(config)

    def forward(self, x, attention_mask=None):
        h = self.output.LayerNorm(x) if self.output.pre_layernorm else x      # pre-LN: attend to LN(x)
        return self.output(self.self(h, attention_mask), x)                    # (B, T, H)


# Copied from bert.BertIntermediate with Bert->Electra
class ElectraIntermediate(nn.Module):
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


# Copied from bert.BertOutput with Bert->Electra
class ElectraOutput(nn.Module):
    """The FFN's down projection + residual, and the FFN sublayer's norm (placed as in ElectraSelfOutput)."""

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


# Copied from bert.BertLayer with Bert->Electra
class ElectraLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = ElectraAttention(config)
        self.intermediate = ElectraIntermediate(config)
        self.output = ElectraOutput(config)

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


# Copied from bert.BertEncoder with Bert->Electra
class ElectraEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([ElectraLayer(config) for _ in range(config.num_hidden_layers)])
        # pre-LN leaves the residual stream unnormalised: one norm after the last layer, for the heads
        self.final_layer_norm = (make_norm(config, config.hidden_size, bias=config.use_bias)
                                 if config.pre_layernorm else None)

    def forward(self, x, attention_mask=None, keep=None):
        """keep: the positions the heads read (see ElectraLayer); the last layer computes only those."""
        for i, layer in enumerate(self.layer):
            x = layer(x, attention_mask, keep if i == len(self.layer) - 1 else None)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x                                                                # (B, T, H)


class ElectraDiscriminatorPredictions(nn.Module):
    """The replaced-token head: one logit per token, > 0 = 'replaced'."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.dense_prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, x):
        return self.dense_prediction(self.act(self.dense(x))).squeeze(-1)      # (B, T)


class ElectraGeneratorPredictions(nn.Module):
    """The generator's MLM transform, H -> E, so that the (shared) word embeddings can be the output matrix."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.LayerNorm = make_norm(config, config.embedding_size)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))                           # (..., E)


class ElectraGeneratorLMHead(nn.Module):
    """E -> V: the word-embedding matrix (tied, passed in by the caller) plus a bias of its own."""

    def __init__(self, config):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, word_embeddings):
        return F.linear(x, word_embeddings, self.bias)                         # (..., V)


class ElectraClassificationHead(nn.Module):
    """Sentence classification from the [CLS] vector: dense + GELU (not BERT's tanh pooler), then out_proj."""

    def __init__(self, config):
        super().__init__()
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, h):
        x = F.gelu(self.dense(self.dropout(h[:, 0])))                          # (B, H), from [CLS]
        return self.out_proj(self.dropout(x))                                  # (B, num_labels)


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


class ElectraPreTrainedModel(nn.Module):
    """Weight init, and reading/writing the Hugging Face checkpoint layout."""
    config_class = ElectraConfig
    base_model_prefix = "electra"
    _fresh_keys = ()          # key prefixes a checkpoint may lack (a new task head), initialised fresh
    # buffers, and the generator's output matrix (a copy of the word embeddings in older checkpoints)
    _dropped_keys = ("position_ids", "token_type_ids", "generator_lm_head.weight")

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

    # Copied from bert.BertPreTrainedModel.from_pretrained with bert->electra
    @classmethod
    def from_pretrained(cls, path, strict=True, **config_overrides):
        """Load a Hugging Face checkpoint directory (ours or published) into this class.

        A checkpoint of the bare encoder (keys without the `electra.` prefix) loads into a head
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
            if k.endswith("predictions.decoder.bias"):                       # old checkpoints: the tied bias
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

class ElectraModel(ElectraPreTrainedModel):
    """The encoder: token ids -> last hidden state (B, T, H). Embeddings of size E, projected to H if E != H."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = ElectraEmbeddings(config)
        self.embeddings_project = (nn.Linear(config.embedding_size, config.hidden_size)
                                   if config.embedding_size != config.hidden_size else None)
        self.encoder = ElectraEncoder(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, document_ids=None,
                keep=None):
        """(B, T, H). document_ids (B, T): packed documents; keep (B, T) bool: the only positions the caller
        reads, computed alone by the last layer's feed-forward (others zeros); see bert.py's docstring."""
        # compiled, the dense path always: unpadding's nonzero() / .item() would break the graph
        dense = attention_mask is None or not self.config.unpad or torch.compiler.is_compiling()
        if attention_mask is not None:
            attention_mask = attention_mask.bool()                             # (B, T), True = real token
            # no padding at all (as packed rows): attend with no mask. Asked only where unpadding asks
            # anyway (on a GPU, bool() waits for the device)
            if not dense and bool(attention_mask.all()):
                attention_mask, dense = None, True
        if document_ids is None and dense:
            x = self.embeddings(input_ids, token_type_ids, position_ids)        # (B, T, E)
            if self.embeddings_project is not None:
                x = self.embeddings_project(x)                                 # (B, T, H)
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
        x = self.embeddings(*ids)                                               # (total, E)
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)                                     # (total, H)
        keep = None if keep is None else keep.reshape(-1)[layout.indices]       # (total,)
        return pad(self.encoder(x, layout, keep), layout.indices, B, T)         # (B, T, H)


class ElectraForPreTraining(ElectraPreTrainedModel):
    """The discriminator: for every token, was it replaced? labels (B, T): 1 = replaced, 0 = original.

    The loss is the binary cross-entropy over the real (non-padding) tokens, as in transformers.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.electra = ElectraModel(config)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        h = self.electra(input_ids, attention_mask, token_type_ids, document_ids=document_ids)  # (B, T, H)
        logits = self.discriminator_predictions(h)                             # (B, T)
        metrics, loss = {}, None
        if labels is not None:
            loss = _rtd_loss(logits, labels, attention_mask, metrics)
        return Output(loss, logits, metrics)


class ElectraForMaskedLM(ElectraPreTrainedModel):
    """The generator: an MLM whose output matrix is the word-embedding matrix (tied) plus a bias."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.electra = ElectraModel(config)
        self.generator_predictions = ElectraGeneratorPredictions(config)
        self.generator_lm_head = ElectraGeneratorLMHead(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        predicted = None if labels is None else labels != -100                 # (B, T): what the head reads
        h = self.electra(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=predicted)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h, labels = h[predicted], labels[predicted]                        # (N, H), (N,): only masked tokens
        x = self.generator_predictions(h)                                      # (N, E) or (B, T, E)
        logits = self.generator_lm_head(x, self.electra.embeddings.word_embeddings.weight)  # (N, V) or (B, T, V)
        if labels is not None:
            loss = _mlm_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


class ElectraForSequenceClassification(ElectraPreTrainedModel):
    """[CLS] -> dense + GELU -> out_proj. num_labels = 1 is regression (MSE), else cross-entropy."""
    _fresh_keys = ("classifier.",)

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.electra = ElectraModel(config)
        self.classifier = ElectraClassificationHead(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        h = self.electra(input_ids, attention_mask, token_type_ids, document_ids=document_ids)  # (B, T, H)
        logits = self.classifier(h)                                            # (B, num_labels)
        metrics, loss = {}, None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
                metrics["acc"] = (logits.detach().argmax(-1) == labels).float().mean()
        return Output(loss, logits, metrics)


# ----------------------------------------------------------------------------- replaced-token detection

class Electra(nn.Module):
    """ELECTRA pretraining: a generator and a discriminator trained jointly on replaced-token detection.

    The two share ONE embeddings module (word, position and type embeddings and their LayerNorm);
    each has its own encoder, and the generator its own embeddings_project when its hidden size
    differs from E. `config` is the discriminator's; the generator's is config.generator_config().
    save_pretrained writes the discriminator at the root of a directory, the generator in generator/.
    """

    def __init__(self, config, generator=None, discriminator=None):
        super().__init__()
        self.config = config
        self.generator = generator if generator is not None else ElectraForMaskedLM(config.generator_config())
        self.discriminator = discriminator if discriminator is not None else ElectraForPreTraining(config)
        g, d = self.generator.config, self.discriminator.config
        if (g.vocab_size, g.embedding_size) != (d.vocab_size, d.embedding_size):
            raise ValueError("generator and discriminator share their embeddings, so they need the same "
                             f"(vocab_size, embedding_size): {(g.vocab_size, g.embedding_size)} vs "
                             f"{(d.vocab_size, d.embedding_size)}")
        self.generator.electra.embeddings = self.discriminator.electra.embeddings      # shared: one module

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        """input_ids arrive masked (by data.py); labels hold the original ids there and -100 elsewhere.
        Returns the loss, the discriminator's logits (B, T) and the metrics of both models.
        document_ids (B, T): packed documents, as in ElectraModel."""
        if labels is None:                                    # nothing masked: only the discriminator's verdicts
            return self.discriminator(input_ids, attention_mask, token_type_ids, document_ids=document_ids)
        # 1. the generator is a masked language model: its MLM loss at the masked positions
        gen = self.generator(input_ids, attention_mask, token_type_ids, labels=labels,
                             document_ids=document_ids)                              # logits (N, V)
        # 2. sample a replacement there from its distribution, and put the samples in the text
        original, corrupted, is_replaced = self._corrupt(input_ids, labels, gen.logits)  # (B, T) each
        # 3. the discriminator reads the corrupted text and says, for every real token, whether it
        #    was replaced; a sample that equals the original token counts as original
        disc = self.discriminator(corrupted, attention_mask, token_type_ids, labels=is_replaced,
                                  document_ids=document_ids)
        # 4. one loss for both; no gradient reaches the generator through the sampling
        loss = self.config.generator_weight * gen.loss + self.config.discriminator_weight * disc.loss
        return Output(loss, disc.logits, {**gen.metrics, **disc.metrics})

    def _corrupt(self, input_ids, labels, generator_logits, generator=None):
        """The original text, the text with samples at the masked positions, and where the two differ."""
        masked = labels != -100                                                   # (B, T)
        original = torch.where(masked, labels, input_ids)                         # (B, T)
        corrupted = input_ids.clone()
        real_vocab = generator_logits[:, :self.config.tokenizer_vocab_size]        # (N, V'): no padding id
        corrupted[masked] = gumbel_sample(real_vocab, generator, self.config.temperature)  # (N,) into (B, T)
        return original, corrupted, corrupted != original

    @torch.no_grad()
    def replaced_token_detection(self, input_ids, attention_mask, token_type_ids, labels, generator=None):
        """For display: the generator's replacements and the discriminator's verdicts, each (B, T).
        `generator` is an optional torch.Generator for the sampling noise (repeatable displays)."""
        gen_logits = self.generator(input_ids, attention_mask, token_type_ids, labels=labels).logits  # (N, V)
        original, corrupted, is_replaced = self._corrupt(input_ids, labels, gen_logits, generator)
        logits = self.discriminator(corrupted, attention_mask, token_type_ids).logits            # (B, T)
        return {"original": original, "corrupted": corrupted, "is_replaced": is_replaced,
                "p_replaced": torch.sigmoid(logits.float())}

    def check_hf_compatible(self):
        """Raise a ValueError naming the options that transformers' Electra classes cannot express."""
        self.discriminator.check_hf_compatible()
        self.generator.check_hf_compatible()

    def save_pretrained(self, path):
        """The discriminator at `path` (what gets fine-tuned), the generator at `path`/generator."""
        self.discriminator.save_pretrained(path)
        self.generator.save_pretrained(Path(path) / "generator")

    @classmethod
    def from_pretrained(cls, path, strict=True):
        """Load a directory written by save_pretrained and share the embeddings again.

        The two saved copies of the embeddings must agree. strict=False also takes a discriminator
        alone (a published one, say) and pairs it with a fresh generator.
        """
        path = Path(path)
        discriminator = ElectraForPreTraining.from_pretrained(path, strict=strict)
        generator = None
        if (path / "generator" / "config.json").is_file():
            generator = ElectraForMaskedLM.from_pretrained(path / "generator", strict=strict)
            d, g = discriminator.electra.embeddings.state_dict(), generator.electra.embeddings.state_dict()
            differ = [k for k in d if not torch.equal(d[k], g[k])]
            if differ and strict:
                raise ValueError(f"the generator's embeddings in {path / 'generator'} differ from the "
                                 f"discriminator's ({', '.join(differ)}), but ELECTRA shares them; "
                                 "pass strict=False to keep the discriminator's")
            if differ:
                print("Electra: the generator's embeddings differ from the discriminator's; sharing the latter")
        elif strict:
            raise FileNotFoundError(f"{path} has no generator/ checkpoint beside the discriminator; "
                                    "pass strict=False to pretrain it with a fresh generator")
        else:
            print(f"Electra: no generator in {path}; a fresh one shares the discriminator's embeddings")
        return cls(discriminator.config, generator, discriminator)


# what train.py pretrains for each --objective
PRETRAINING_CLASSES = {"rtd": Electra, "mlm": ElectraForMaskedLM}
