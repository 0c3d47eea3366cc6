"""What the model files share and do not need to show: configs, checkpoints, and the family contract.

transformers keeps this machinery in configuration_utils.py and modeling_utils.py; here it is one
file, so that bert.py, roberta.py, albert.py and electra.py hold their architecture and little else.
  Config           mixin for a family's config dataclass: presets, config.json read with type checks
                   (the sizes required, another family's model_type refused) and written as transformers
                   writes it, the efficient-BERT options that transformers cannot express, and the two
                   choices they name (ACT2FN for hidden_act, make_norm for norm_type)
  PreTrainedModel  base of every model class: BERT's weight init, and from_pretrained / save_pretrained
                   in the Hugging Face layout (config.json + model.safetensors, also pytorch_model.bin and
                   sharded checkpoints), driven by class attributes: config_class, base_model_prefix, the
                   keys a checkpoint may lack (a new task head) and the keys never loaded (buffers, tied
                   copies). Writes are atomic; pickles are read only by torch.load(weights_only=True).
                   Also the sequence classifiers' loss, the same in every family.
  Family           what the command-line tools need from a model file, declared once at its end, and the
                   FLOP count of a training step that follows from it (Family.flops_per_token)
This file depends only on torch and safetensors.
"""
import json
import os
import pickle
import re
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- configs

# The efficient-BERT options (four fields of every family's config, the four after `unpad`) and their
# values; the first is the published architecture's, the only one transformers can express.
OPTION_VALUES = {"pre_layernorm": (False, True), "norm_type": ("layernorm", "rmsnorm"),
                 "use_bias": (True, False), "ffn_type": ("mlp", "geglu")}
# What the `crammed` presets set on top of their sizes (Geiping & Goldstein 2022; see bert.py's PRESETS)
CRAMMED = dict(pre_layernorm=True, norm_type="layernorm", use_bias=False, ffn_type="geglu",
               hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
# The config.json keys that shape the weights: required, since a default would build another model
SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")


# The activations a config's hidden_act may name (gelu_new is the tanh approximation of the TF code)
ACT2FN = {"gelu": F.gelu, "relu": F.relu,
          "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
          "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


def make_norm(config, size, bias=True):
    """The norm over the last dim, of `size` features, that config.norm_type names: LayerNorm, or RMSNorm
    (x / sqrt(mean(x^2) + eps) * w: a weight, no bias)."""
    if config.norm_type == "rmsnorm":
        return nn.RMSNorm(size, eps=config.layer_norm_eps)
    return nn.LayerNorm(size, eps=config.layer_norm_eps, bias=bias)


class Config:
    """Mixin of a family's `@dataclass` config, which sets `model_type` and `PRESETS` as ClassVars."""

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        for name, allowed in OPTION_VALUES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {', '.join(map(repr, allowed))}")

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.model_type} preset {name!r}; choose one of {', '.join(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d):
        """Build from a config.json dict, ignoring the keys this family does not use. Another family's
        model_type is refused; the sizes that shape the weights are required (a default would build
        another model); every value must have its field's type."""
        if d.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"it is for model_type {d.get('model_type')!r}, not {cls.model_type!r}: "
                             f"load it with the {d.get('model_type')}.py file instead")
        if any(k not in d for k in SIZES):
            raise ValueError(f"it lacks {', '.join(k for k in SIZES if k not in d)} (the sizes of the weights)")
        types = {f.name: f.type for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in types}
        if "id2label" in d and "num_labels" not in d:
            kw["num_labels"] = len(d["id2label"])
        allowed = {bool: bool, int: int, float: (int, float), str: str, Optional[float]: (int, float, type(None)),
                   Optional[int]: (int, type(None))}
        wrong = [f"{k} should be {getattr(types[k], '__name__', types[k])}, not {v!r}" for k, v in kw.items()
                 if (isinstance(v, bool) and types[k] is not bool) or not isinstance(v, allowed.get(types[k], object))]
        wrong += [f"{k} should be positive, not {kw[k]}" for k in SIZES if not wrong and kw[k] < 1]
        if wrong:
            raise ValueError("; ".join(wrong))
        return cls(**kw)

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

    def hf_incompatible(self):
        """The options set here that transformers' classes cannot express, as 'name=value' strings."""
        return [f"{name}={getattr(self, name)!r}" for name, values in OPTION_VALUES.items()
                if getattr(self, name) != values[0]]


# ----------------------------------------------------------------------------- reading and writing files

class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded, or is refused: the message names the file and the problem."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle refused because loading it would run code: crafted, not damaged."""


def atomic_write(path, write):
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


def _unreadable(file, e, holds, fix=None):
    """The CheckpointError for `e`, raised while reading `file`, a file in which `holds` (e.g. "a weights file
    holds only tensors"); `fix` says what to do instead of a weights file's advice."""
    call = re.search(r"GLOBAL ([\w.]+)", str(e))
    if call:
        return UnsafeCheckpointError(f"{file} is refused: loading it would call {call[1]}, i.e. run code, where {holds}. "
                               + (fix or "Do not load it unless you trust its source (then convert it to "
                                         "model.safetensors)"))
    reason = next((line for line in str(e).splitlines() if "Unsupported" in line), str(e).split("\n")[0])
    if isinstance(e, pickle.UnpicklingError):
        return CheckpointError(f"{file} is refused: it is not plain tensors that torch.load(weights_only=True) "
                               f"can read ({reason.strip()}); it may be corrupt, or hold objects whose "
                               "unpickling could run code" + (f". {fix}" if fix else ""))
    return CheckpointError(f"{file} is corrupt or truncated ({type(e).__name__}: {reason[:200]}); "
                           + (fix or "save or download it again"))


def read_pickle(file, holds, fix=None):
    """What torch.load(file, weights_only=True) reads onto the CPU: its unpickler builds tensors, numbers and
    plain containers only, so a file that would call anything else is refused and never run. Any failure is a
    CheckpointError naming the file and the problem (see _unreadable for `holds` and `fix`)."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _unreadable(file, e, holds, fix) from None


def load_weights(file):
    """{name: tensor} from one weights file. A pickle goes through read_pickle (torch.load(weights_only=True)),
    whose unpickler builds tensors and plain containers only: a file that would call anything else is refused."""
    from safetensors.torch import load_file
    holds = "a weights file holds only tensors"
    if file.suffix == ".safetensors":
        try:
            state = load_file(file)
        except Exception as e:
            raise _unreadable(file, e, holds) from None
    else:
        state = read_pickle(file, holds)
    if not (isinstance(state, dict) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        raise CheckpointError(f"{file} holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def read_state_dict(path):
    """Weights of an HF checkpoint directory: model.safetensors (or its shards), else pytorch_model.bin."""
    path = Path(path)
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        if (path / single).exists():
            return load_weights(path / single)
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
            return {k: v for shard in shards for k, v in load_weights(path / shard).items()}
    raise FileNotFoundError(f"no weights in {path}: expected model.safetensors or pytorch_model.bin")


def read_config(path):
    """config.json of a checkpoint directory as a dict, or a CheckpointError that says what is wrong with it."""
    path, file = Path(path), Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{path} is not a checkpoint directory: it has no config.json")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:                                                  # not JSON, or not UTF-8
        raise CheckpointError(f"{file} is not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} holds a JSON {type(config).__name__}, not an object of settings")
    return config


# ----------------------------------------------------------------------------- models

class PreTrainedModel(nn.Module):
    """Weight init, and reading/writing the Hugging Face checkpoint layout, for every model class.

    A family's base class sets `config_class` and `base_model_prefix` (the encoder's attribute in a
    head model, e.g. "bert"); a class may add to `_fresh_keys` (key prefixes a checkpoint may lack,
    e.g. a new task head, initialised fresh), `_dropped_keys` (substrings of keys never loaded:
    buffers, tied copies of the word embeddings, another head's weights) and `_tied_bias`.
    """
    config_class = None
    base_model_prefix = ""
    _fresh_keys = ()
    _dropped_keys = ("position_ids", "token_type_ids")
    _tied_bias = "predictions.decoder.bias"   # older checkpoints' name of the MLM head's bias (now `...predictions.bias`)

    def _init_weights(self, module):
        """BERT's: normal(0, initializer_range) weights, zero biases and padding embedding, unit norms."""
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

    def num_parameters(self, exclude_embeddings=False):
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= sum(p.numel() for m in self.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
        return n

    def check_hf_compatible(self):
        """Raise a ValueError naming the config options that transformers' class of this name cannot express."""
        options = self.config.hf_incompatible()
        if options:
            raise ValueError(f"{', '.join(options)} cannot be expressed in transformers' {type(self).__name__}: "
                             "save_pretrained writes a checkpoint that only our from_pretrained loads")

    def save_pretrained(self, path):
        """config.json + model.safetensors. A config with an efficient-BERT option (pre_layernorm, ...)
        is saved too, marked "transformers_compatible": false, with a warning once per model."""
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {**self.config.to_dict(), "architectures": [type(self).__name__]}
        options = self.config.hf_incompatible()
        if options:
            config["transformers_compatible"] = False
            if not getattr(self, "_said_hf_incompatible", False):
                warnings.warn(f"{type(self).__name__}: {', '.join(options)} cannot be expressed in transformers' "
                              f"{type(self).__name__}: the checkpoint loads with our from_pretrained only "
                              '(config.json says "transformers_compatible": false)', stacklevel=2)
                self._said_hf_incompatible = True
        sd = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(path / "model.safetensors", lambda f: save_file(sd, f, metadata={"format": "pt"}))
        atomic_write(path / "config.json", lambda f: Path(f).write_text(json.dumps(config, indent=2) + "\n"))

    @classmethod
    def from_pretrained(cls, path, strict=True, **config_overrides):
        """Load a Hugging Face checkpoint directory (ours or published) into this class.

        A checkpoint of the bare encoder (keys without the base-model prefix, e.g. `bert.`) loads into
        a head model and vice versa. Missing or unexpected weights are an error that lists them;
        strict=False loads what matches (use it to drop or add heads). A task head that the
        checkpoint lacks (the classifier) is initialised fresh; a warning names it, and another one the
        weights of a head this class lacks, which are not used.

        Another family's checkpoint (config.json's model_type) is refused, strict=False included:
        the families differ in more than their weights' names (RoBERTa offsets its positions,
        ALBERT shares layers, ELECTRA projects its embeddings), so a partial load would compute
        something else without a word. A file that cannot be read (not JSON, truncated, corrupt,
        missing sizes, wrong types or shapes) raises CheckpointError, a ValueError that names it;
        a pickle is read only by torch.load(weights_only=True), and one that would run code is refused.
        """
        path = Path(path)
        config_dict = read_config(path)
        try:
            config = cls.config_class.from_dict({**config_dict, **config_overrides})
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path / 'config.json'} cannot be loaded into {cls.__name__}: {e}") from None
        weights = read_state_dict(path)                                      # all read, or an error
        model = cls(config)
        state = {}
        for k, v in weights.items():
            # TensorFlow-converted checkpoints name the norms' parameters gamma and beta
            k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
            if k.endswith(cls._tied_bias):                                   # old checkpoints: the tied bias
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
            warnings.warn(f"{cls.__name__}: initialised fresh (not in {path}): "
                          f"{sorted({k.rsplit('.', 1)[0] for k in fresh + missing})}", stacklevel=2)
        if unused:
            warnings.warn(f"{cls.__name__}: not used (another head's weights): "
                          f"{sorted({k.rsplit('.', 1)[0] for k in unused})}", stacklevel=2)
        return model


def classification_loss(logits, labels, metrics):
    """The loss of a sequence classifier: MSE for one output (regression), else cross-entropy (and accuracy
    into `metrics`). logits (B, num_labels), labels (B,)."""
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    metrics["acc"] = (logits.detach().argmax(-1) == labels).float().mean()
    return F.cross_entropy(logits.float(), labels)


# ----------------------------------------------------------------------------- the family contract

TOKENIZER_KINDS = ("wordpiece", "bpe", "unigram")       # tokenizer.py's kinds
EMBEDDING_PROJECTIONS = ("never", "always", "if_sizes_differ")


@dataclass(frozen=True)
class Family:
    """What the tools (train.py, finetune.py, predict.py, bench.py, experiment.py) need from a model file,
    which declares ONE at its end (`FAMILY = Family(...)`). Every field is required, so a file that leaves
    one out fails when it is imported; the tools read these fields (and flops_per_token, computed from
    them) and nothing else of the module. The "rtd" objective, where a family has it, is a generator and
    a discriminator: its model's `.generator` fills masks and `.replaced_token_detection(...)` returns
    the replacements and verdicts that train.py shows."""
    name: str                         # the --model name, the module's name and config.json's model_type
    config: type                      # the config dataclass (from_preset, from_dict)
    pretraining: dict                 # --objective -> the model class train.py pretrains for it
    default_objective: str            # the objective train.py picks when --objective is not given
    masked_lm: type                   # the class that fills masks (predict.py), e.g. BertForMaskedLM
    mlm_head: str                     # weight-name prefix of its MLM head: a checkpoint has one iff it has these
    classification: type              # XForSequenceClassification (finetune.py)
    tokenizer_kind: str               # tokenizer.py kind the family is pretrained with
    masking: dict                     # data.Masker's options: mlm_probability, mask_ratio, random_ratio
    packed: bool                      # pretraining rows packed with contiguous sentences (RoBERTa's FULL-SENTENCES)
    position_offset: int              # rows of the position table no token uses: seq_len <= max_pos - offset
    discriminator: Optional[type]     # ELECTRA's replaced-token detector (predict.py --rtd), else None
    discriminator_head: Optional[str]  # weight-name prefix of its head, else None
    tokenizer_vocab_field: bool       # its config has tokenizer_vocab_size, which train.py sets when it pads the
                                      # vocabulary: ELECTRA's generator never samples the ids beyond it
    embedding_projection: str         # the E -> H map after the embeddings: "never" (they are H wide), "always"
                                      # (ALBERT's), "if_sizes_differ" (ELECTRA's, when embedding_size != hidden_size)

    def __post_init__(self):
        if self.default_objective not in self.pretraining:
            raise ValueError(f"{self.name}: default_objective {self.default_objective!r} is not one of "
                             f"its pretraining objectives {list(self.pretraining)}")
        if self.tokenizer_kind not in TOKENIZER_KINDS:
            raise ValueError(f"{self.name}: tokenizer_kind {self.tokenizer_kind!r} is not one of {TOKENIZER_KINDS}")
        if self.config.model_type != self.name:
            raise ValueError(f"{self.name}: its config's model_type is {self.config.model_type!r}")
        if (self.discriminator is None) != (self.discriminator_head is None):
            raise ValueError(f"{self.name}: give discriminator and discriminator_head together, or neither")
        if ("rtd" in self.pretraining) != (self.discriminator is not None):
            raise ValueError(f"{self.name}: a family with the rtd objective has a discriminator, and one without "
                             "has none")
        if self.embedding_projection not in EMBEDDING_PROJECTIONS:
            raise ValueError(f"{self.name}: embedding_projection {self.embedding_projection!r} is not one of "
                             f"{EMBEDDING_PROJECTIONS}")

    def flops_per_token(self, config, seq_len, objective=None, mlm_fraction=None, attn_len=None):
        """USEFUL training FLOPs per token of `objective` (default: the family's) for a model of `config`,
        the number bench.py's MFU and experiment.py's budgets use (biases, norms, activations, softmax and
        the embedding lookups not counted; a FLOP is a multiply or an add, a matmul 2 per multiply-add):

          encoder      6 x L x (4 H^2 + 2 H I) + 12 x L x T x H     (encoder_flops; ALBERT: its shared layer
                       applied L times)
          projection   + 6 x E x H                 the E -> H map, where embedding_projection says it runs
          MLM head     + 6 x f x (H x E + E x V)   transform + vocabulary projection at the predicted fraction f
                       of the tokens only (E = H where the embeddings are H wide): transformers computes the
                       projection at every position, but only f of it is useful work
          NSP / SOP    + 6 x (H^2 + 2 H) / seq_len  pooler + 2-way classifier, once per sequence
          rtd          the generator (config.generator_config(): its H, I; same L, E and V) as above,
                       + the discriminator's encoder and projection + 6 (H^2 + H) at EVERY token (its head)

        f = mlm_fraction (default: the family's masking rate); T = attn_len, the keys a token attends to
        (default seq_len; with padding, the mean over the real tokens); seq_len = tokens per sequence."""
        objective = objective or self.default_objective
        f = self.masking["mlm_probability"] if mlm_fraction is None else mlm_fraction
        T = seq_len if attn_len is None else attn_len
        E = config.hidden_size if self.embedding_projection == "never" else config.embedding_size
        V = config.vocab_size

        def projection(H):
            runs = self.embedding_projection == "always" or (self.embedding_projection == "if_sizes_differ" and E != H)
            return 6 * E * H if runs else 0

        def masked_lm(c):                              # [E -> H] -> encoder -> MLM head (H -> E -> V) at f
            H = c.hidden_size
            return encoder_flops(c.num_hidden_layers, H, c.intermediate_size, T) + projection(H) + 6 * f * (H * E + E * V)

        if objective == "rtd":
            H = config.hidden_size
            return (masked_lm(config.generator_config())
                    + encoder_flops(config.num_hidden_layers, H, config.intermediate_size, T) + projection(H)
                    + 6 * (H * H + H))
        total = masked_lm(config)
        if objective in ("mlm+nsp", "mlm+sop"):
            H = config.hidden_size
            total += 6 * (H * H + 2 * H) / seq_len
        return total


def encoder_flops(L, H, I, T):
    """Training FLOPs per token of L transformer layers: 6 x matmul parameters (QKV + output 4H^2, FFN 2HI) for
    forward (2) + backward (4), plus 12 L T H for the attention scores QK^T and the mix PV (2 T H each, x 3)."""
    return 6 * L * (4 * H * H + 2 * H * I) + 12 * L * T * H
