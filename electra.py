"""ELECTRA: pretraining a text encoder as a discriminator rather than a generator.

Clark, Luong, Le, Manning, "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than
Generators", ICLR 2020. https://arxiv.org/abs/2003.10555, code: github.com/google-research/electra

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
The encoder is BERT's (its blocks are copied from bert.py), with one addition: the embeddings have
their own size E = embedding_size, and `embeddings_project` maps E -> H when the two differ
(ELECTRA-small: E = 128, H = 256). No pooler: a classifier reads [CLS] through dense + GELU.
Padding, packing (document_ids) and the efficient-BERT options are bert.py's (see its docstring);
the generator gets the discriminator's options.

Parameter names are those of Hugging Face `transformers` (ElectraForPreTraining = the discriminator,
ElectraForMaskedLM = the generator), so checkpoints move both ways with the same outputs; modeling.py
reads and writes them. A run directory holds the discriminator at its root, the generator in
generator/. The sections are bert.py's, then the replaced-token detection that joins the two
(`Electra`). Depends only on torch, `bert_kernels` and modeling.py.
"""
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from bert_kernels import Layout, cross_entropy, self_attention
from modeling import ACT2FN, CRAMMED, Config, Family, PreTrainedModel, classification_loss, make_norm


# ----------------------------------------------------------------------------- config

@dataclass
class ElectraConfig(Config):
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
    # Copied from bert.BertConfig.classifier_dropout..ffn_type with Bert->Electra,the module docstring->bert.py's docstring
    classifier_dropout: Optional[float] = None   # None = hidden_dropout_prob
    num_labels: int = 2                           # for ElectraForSequenceClassification; 1 = regression
    unpad: bool = True                            # run padded batches on their real tokens only (see bert.py's docstring)
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
    # small/base/large: the paper's Table 6. tiny/mini: CPU-sized, as BERT's; tiny samples at temperature 3 (module docstring)
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

    def generator_config(self):
        """The generator: hidden size, heads and FFN scaled by generator_size; same layers, E and vocabulary."""
        f = self.generator_size
        hidden, heads = round(self.hidden_size * f), max(1, round(self.num_attention_heads * f))
        if not 0 < f <= 1 or hidden % heads:
            raise ValueError(f"generator_size={f} gives a generator of hidden size {hidden} with {heads} heads; "
                             "choose a fraction in (0, 1] that divides hidden size and heads evenly")
        return replace(self, hidden_size=hidden, num_attention_heads=heads,
                       intermediate_size=round(self.intermediate_size * f), generator_size=1.0)


# ----------------------------------------------------------------------------- outputs

class Output(NamedTuple):
    loss: Optional[torch.Tensor]       # scalar, None without labels
    logits: torch.Tensor               # RTD: (B, T); MLM: (N, V) at the N predicted positions, or (B, T, V)
    metrics: dict                      # detached scalars, e.g. {"rtd_acc": ...}


# Copied from bert._mlm_loss
def _mlm_loss(logits, labels, metrics):
    """Cross-entropy over the predicted positions; logits (N, V), labels (N,). bert_kernels.cross_entropy is
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


# ----------------------------------------------------------------------------- blocks

# Copied from bert.BertEmbeddings with Bert->Electra,hidden_size->embedding_size,H)->E)
class ElectraEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = make_norm(config, config.embedding_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids):
        """ids (B, T) (positions may be (1, T)), or the (total,) real tokens of an unpadded layout."""
        x = self.word_embeddings(input_ids)                                    # (B, T, E) or (total, E)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))                                  # (B, T, E) or (total, E)

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

    def forward(self, x, layout):
        """x (B, T, H) or (total, H), as `layout` says."""
        heads = (*x.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (proj(x).view(heads) for proj in (self.query, self.key, self.value))   # (..., nh, hd) each
        y = self_attention(q, k, v, layout, dropout_p=self.dropout_p if self.training else 0.0)
        return y.flatten(-2)                                                    # (..., H)


# Copied from bert.BertOutput with Bert->Electra
class ElectraOutput(nn.Module):
    """A sublayer's output: projection back to H, dropout. Also holds the sublayer's norm, which ElectraLayer
    applies. The attention's is `attention.output` (from H), the feed-forward's `output` (from I)."""

    def __init__(self, config, in_size):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size, bias=config.use_bias)
        self.LayerNorm = make_norm(config, config.hidden_size, bias=config.use_bias)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h):
        return self.dropout(self.dense(h))                                      # (..., H)


# Copied from bert.BertAttention with Bert->Electra
class ElectraAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = ElectraSelfAttention(config)
        self.output = ElectraOutput(config, config.hidden_size)

    def forward(self, x, layout):
        return self.output(self.self(x, layout))                               # (..., H)


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
            a, b = self.dense(x).chunk(2, dim=-1)                               # (..., I) each
            return self.act(a) * b                                              # (..., I)
        return self.act(self.dense(x))                                          # (..., I)


# Copied from bert.BertLayer with Bert->Electra
class ElectraLayer(nn.Module):
    """Attention, then feed-forward, each a residual sublayer with its norm placed after the sum (post-LN,
    BERT) or before the sublayer (pre_layernorm): x = LN(x + f(x)) or x = x + f(LN(x))."""

    def __init__(self, config):
        super().__init__()
        self.attention = ElectraAttention(config)
        self.intermediate = ElectraIntermediate(config)
        self.output = ElectraOutput(config, config.intermediate_size)
        self.pre_layernorm = config.pre_layernorm

    def forward(self, x, layout, keep=None):
        """x (B, T, H) or (total, H), as `layout` says. keep (x's leading shape) bool, optional: the only
        positions anyone reads after this layer; the feed-forward runs on them alone, the others are zeros."""
        x = self.sublayer(x, self.attention.output.LayerNorm, self.attention, layout)
        if keep is None:
            return self.sublayer(x, self.output.LayerNorm, self.feed_forward)  # (..., H)
        y = self.sublayer(x[keep], self.output.LayerNorm, self.feed_forward)   # (N, H)
        return torch.zeros_like(x).index_put((keep,), y)                        # (..., H)

    def sublayer(self, x, norm, f, *args):
        if self.pre_layernorm:
            return x + f(norm(x), *args)                                        # pre-LN
        return norm(x + f(x, *args))                                            # post-LN

    def feed_forward(self, h):
        return self.output(self.intermediate(h))                               # (..., H)


# Copied from bert.BertEncoder with Bert->Electra
class ElectraEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([ElectraLayer(config) for _ in range(config.num_hidden_layers)])
        # pre-LN leaves the residual stream unnormalised: one norm after the last layer, for the heads
        self.final_layer_norm = (make_norm(config, config.hidden_size, bias=config.use_bias)
                                 if config.pre_layernorm else None)

    def forward(self, x, layout, keep=None):
        """keep: the positions the heads read (see ElectraLayer); the last layer computes only those."""
        for i, layer in enumerate(self.layer):
            x = layer(x, layout, keep if i == len(self.layer) - 1 else None)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x                                                                # (..., H)


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


# ----------------------------------------------------------------------------- models

class ElectraPreTrainedModel(PreTrainedModel):
    """Weight init and the Hugging Face checkpoint layout (modeling.PreTrainedModel) for ELECTRA's weights."""
    config_class = ElectraConfig
    base_model_prefix = "electra"
    _dropped_keys = PreTrainedModel._dropped_keys + ("generator_lm_head.weight",)  # old checkpoints' tied output matrix


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

    def embed(self, *ids):
        """The embeddings (of size E), projected to H when E != H; ids as ElectraEmbeddings takes them."""
        x = self.embeddings(*ids)                                               # (B, T, E) or (total, E)
        return x if self.embeddings_project is None else self.embeddings_project(x)   # (B, T, H) or (total, H)

    # Copied from bert.BertModel.forward with self.embeddings(*ids)->self.embed(*ids)
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, document_ids=None,
                keep=None):
        """(B, T, H). document_ids (B, T): packed documents, see the module docstring. keep (B, T) bool: the
        only positions the caller will read (e.g. the masked ones); the last layer's feed-forward skips the
        others, whose outputs are zeros."""
        layout = Layout.of(input_ids, attention_mask, document_ids, self.config.unpad)   # padded or unpadded
        if position_ids is None:
            position_ids = self.embeddings.make_position_ids(input_ids, layout.starts)  # (1, T) or (B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        ids = [layout.gather(t) for t in (input_ids, token_type_ids, position_ids)]    # (B, T) or (total,)
        x = self.embed(*ids)                                               # (B, T, H) or (total, H)
        return layout.pad(self.encoder(x, layout, layout.gather(keep)))        # (B, T, H)


class ElectraForPreTraining(ElectraPreTrainedModel):
    """The discriminator: for every token, was it replaced? labels (B, T): 1 = replaced, 0 = original.
    The loss is the binary cross-entropy over the real (non-padding) tokens, as in transformers."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.electra = ElectraModel(config)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        h = self.electra(input_ids, attention_mask, token_type_ids, document_ids=document_ids)  # (B, T, H)
        logits = self.discriminator_predictions(h)                             # (B, T)
        metrics = {}
        loss = None if labels is None else _rtd_loss(logits, labels, attention_mask, metrics)
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

    def head(self, h, word_embeddings):
        """The generator's MLM head: generator_predictions (H -> E), then generator_lm_head (E -> V)."""
        return self.generator_lm_head(self.generator_predictions(h), word_embeddings)   # (..., V)

    # Copied from bert.BertForMaskedLM.forward with bert->electra,self.cls->self.head
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        predicted = None if labels is None else labels != -100                 # (B, T): what the head reads
        h = self.electra(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=predicted)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h, labels = h[predicted], labels[predicted]                        # (N, H), (N,): only masked tokens
        logits = self.head(h, self.electra.embeddings.word_embeddings.weight)      # (N, V) or (B, T, V)
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

    # Copied from roberta.RobertaForSequenceClassification.forward with roberta->electra
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        h = self.electra(input_ids, attention_mask, token_type_ids, document_ids=document_ids)  # (B, T, H)
        logits = self.classifier(h)                                             # (B, num_labels)
        metrics = {}
        loss = None if labels is None else classification_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


# ----------------------------------------------------------------------------- replaced-token detection

def gumbel_sample(logits, rng=None, temperature=1.0):
    """One id per row, drawn from softmax(logits / temperature) by the Gumbel-max trick; float32, no
    gradient. (N, V) -> (N,). rng: an optional torch.Generator for the noise."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (samples come from softmax(logits / temperature)); got {temperature}")
    noise = torch.empty(logits.shape, dtype=torch.float32, device=logits.device)   # (N, V), one buffer:
    noise.uniform_(generator=rng)                                                 # uniform in [0, 1),
    noise.add_(1e-9).log_().neg_().add_(1e-9).log_().neg_()                       # -log(-log u): Gumbel(0, 1),
    noise.add_(logits.detach(), alpha=1 / temperature)                            # + logits / T,
    return noise.max(-1).indices                                                  # argmax (max: 2x faster); (N,)


class Electra(nn.Module):
    """ELECTRA pretraining: a generator and a discriminator trained jointly on replaced-token detection.

    The two share ONE embeddings module (word, position and type embeddings and their LayerNorm);
    each has its own encoder, and the generator its own embeddings_project when its hidden size
    differs from E. `config` is the discriminator's; the generator's is config.generator_config().
    """

    def __init__(self, config, generator=None, discriminator=None):
        super().__init__()
        self.config = config
        self.generator = generator if generator is not None else ElectraForMaskedLM(config.generator_config())
        self.discriminator = discriminator if discriminator is not None else ElectraForPreTraining(config)
        g, d = self.generator.config, self.discriminator.config
        if (g.vocab_size, g.embedding_size) != (d.vocab_size, d.embedding_size):
            raise ValueError("generator and discriminator share their embeddings, so they need the same (vocab_size, "
                             f"embedding_size): {(g.vocab_size, g.embedding_size)} vs {(d.vocab_size, d.embedding_size)}")
        self.generator.electra.embeddings = self.discriminator.electra.embeddings      # shared: one module

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        """input_ids arrive masked (by data.py), labels hold the original ids there and -100 elsewhere, document_ids
        as in ElectraModel. Returns the loss, the discriminator's logits (B, T) and the metrics of both models."""
        if labels is None:                                    # nothing masked: only the discriminator's verdicts
            return self.discriminator(input_ids, attention_mask, token_type_ids, document_ids=document_ids)
        # 1. the generator is a masked language model: its MLM loss at the masked positions
        gen = self.generator(input_ids, attention_mask, token_type_ids, labels=labels, document_ids=document_ids)  # (N, V)
        # 2. sample a replacement there from its distribution, and put the samples in the text
        _, corrupted, is_replaced = self.corrupt(input_ids, labels, gen.logits)  # (B, T) each
        # 3. the discriminator reads the corrupted text and says, for every real token, whether it was replaced
        disc = self.discriminator(corrupted, attention_mask, token_type_ids, labels=is_replaced, document_ids=document_ids)
        # 4. one loss for both; no gradient reaches the generator through the sampling
        loss = self.config.generator_weight * gen.loss + self.config.discriminator_weight * disc.loss
        return Output(loss, disc.logits, {**gen.metrics, **disc.metrics})

    def corrupt(self, input_ids, labels, generator_logits, rng=None):
        """Step 2: (original, corrupted, is_replaced), each (B, T). corrupted holds a sample from generator_logits
        (N, V) at each masked position (labels != -100); one equal to the original is not a replacement. rng:
        an optional torch.Generator. No gradient."""
        masked = labels != -100                                                   # (B, T)
        original = torch.where(masked, labels, input_ids)                         # (B, T)
        corrupted = input_ids.clone()
        real_vocab = generator_logits[:, :self.config.tokenizer_vocab_size]        # (N, V'): no padding id
        corrupted[masked] = gumbel_sample(real_vocab, rng, self.config.temperature)        # (N,) into (B, T)
        return original, corrupted, corrupted != original

    @torch.no_grad()
    def replaced_token_detection(self, input_ids, attention_mask, token_type_ids, labels, rng=None):
        """For display: the generator's replacements and the discriminator's verdicts, each (B, T).
        `rng` is an optional torch.Generator for the sampling noise (repeatable displays)."""
        gen_logits = self.generator(input_ids, attention_mask, token_type_ids, labels=labels).logits  # (N, V)
        original, corrupted, is_replaced = self.corrupt(input_ids, labels, gen_logits, rng)
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
        """Load a directory written by save_pretrained and share the embeddings again: the two saved copies
        must agree. strict=False also takes a discriminator alone (a published one) with a fresh generator."""
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
                warnings.warn("Electra: the generator's embeddings differ from the discriminator's; sharing the latter",
                              stacklevel=2)
        elif strict:
            raise FileNotFoundError(f"{path} has no generator/ checkpoint beside the discriminator; "
                                    "pass strict=False to pretrain it with a fresh generator")
        else:
            warnings.warn(f"Electra: no generator in {path}; a fresh one shares the discriminator's embeddings", stacklevel=2)
        return cls(discriminator.config, generator, discriminator)


# ----------------------------------------------------------------------------- what the tools use

FAMILY = Family(
    name="electra", config=ElectraConfig, pretraining={"rtd": Electra, "mlm": ElectraForMaskedLM},
    default_objective="rtd", masked_lm=ElectraForMaskedLM, mlm_head="generator_predictions.",  # the generator
    classification=ElectraForSequenceClassification, tokenizer_kind="wordpiece",
    # ELECTRA's pretrain_helpers.mask(): 15% of the tokens are chosen; 85% of those become [MASK], the
    # other 15% stay as they are, none is replaced by a random token (the generator's samples do that)
    masking=dict(mlm_probability=0.15, mask_ratio=0.85, random_ratio=0.0), packed=False, position_offset=0,
    discriminator=ElectraForPreTraining, discriminator_head="discriminator_predictions.",
    tokenizer_vocab_field=True,       # ElectraConfig.tokenizer_vocab_size: the generator samples below it
    embedding_projection="if_sizes_differ")   # embeddings_project, only when embedding_size != hidden_size

