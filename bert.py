"""BERT: a bidirectional Transformer encoder pretrained with masked language modelling.

Devlin, Chang, Lee, Toutanova, "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding", NAACL 2019. https://arxiv.org/abs/1810.04805
Small presets: Turc, Chang, Lee, Toutanova, "Well-Read Students Learn Better", 2019.
https://arxiv.org/abs/1908.08962

The architecture, top to bottom:
  embeddings   word + learned position + token type (segment A/B), LayerNorm, dropout
  encoder      N post-LN layers: x = LN(x + Attn(x)); x = LN(x + FFN(x)), GELU feed-forward
  pooler       tanh(W h_[CLS]), the sentence vector for NSP and classification
  heads        MLM (a transform, then the word embeddings as the output matrix, plus a bias)
               and next-sentence prediction (NSP, 2 classes: 0 = B follows A, 1 = random B)

Parameter names are those of Hugging Face `transformers`, so `from_pretrained` reads a
published checkpoint directory and `save_pretrained` writes one that `transformers` loads
with the same outputs; both come from modeling.py, which holds what the four families share
(configs, checkpoints, the family contract). This file depends only on torch, `bert_kernels` and
modeling.py.

Padding and packing. `BertModel.forward(input_ids, attention_mask=None, token_type_ids=None,
position_ids=None, document_ids=None, keep=None)`:
  attention_mask  (B, T), True = a real token. When a batch has padding (and config.unpad, the
                  default), the real tokens are gathered once into a (total, H) layout and the
                  embeddings' LayerNorm, every projection, feed-forward and norm run on them only;
                  attention runs per sequence, and the result is scattered back to (B, T, H), with
                  zeros at the padded positions. Either way the real positions get the same numbers
                  (the padded positions' values differ: `transformers` computes them).
  document_ids    (B, T) int, optional: several documents packed in one row. A token attends only
                  to the tokens of its own run of equal ids in its row (and never to padding), and
                  its position id restarts at 0 with each document (unless position_ids is given),
                  so each document gets the outputs it would get alone. E.g. [[0, 0, 0, 1, 1, 2]].
  keep            (B, T) bool, optional: the only positions the caller reads (the heads' inputs, e.g.
                  the masked tokens); the last layer's feed-forward runs on them alone, the others
                  come out as zeros.
bert_kernels.Layout decides the layout once per forward (bert_kernels/layout.py) and bert_kernels.self_attention
takes q, k, v in either, so a layer has one code path. Under torch.compile the padded layout runs.

Options from the efficient-BERT literature (config fields, all off in the published presets, which
`transformers` loads; the `crammed` presets turn them on, see PRESETS):
  pre_layernorm   x = x + Attn(LN(x)); x = x + FFN(LN(x)), and one more norm after the last layer
                  (Xiong et al. 2020). The norms keep their names (`attention.output.LayerNorm` is the
                  norm of the attention sublayer), they only move before it. Trains stably at higher LR.
  norm_type       "rmsnorm": every norm is x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019).
  use_bias        False: no bias in the layers' linear maps (q, k, v, attention output, FFN) nor norms.
  ffn_type        "geglu": act(x W_a) * (x W_b), then the down projection (Shazeer 2020, "GLU
                  Variants"); the up projection is 2 x intermediate_size wide.
A checkpoint that uses any of them is saved as usual (our from_pretrained reads it back), with
`"transformers_compatible": false` in config.json: transformers' classes cannot express it.
"""
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from bert_kernels import Layout, cross_entropy, self_attention
from modeling import ACT2FN, CRAMMED, Config, Family, PreTrainedModel, classification_loss, make_norm


# ----------------------------------------------------------------------------- config

@dataclass
class BertConfig(Config):
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout: Optional[float] = None   # None = hidden_dropout_prob
    num_labels: int = 2                           # for BertForSequenceClassification; 1 = regression
    unpad: bool = True                            # run padded batches on their real tokens only (see the module docstring)
    # efficient-BERT options (see the module docstring); the defaults are the published architecture
    pre_layernorm: bool = False                   # norm before each sublayer, and a final norm
    norm_type: str = "layernorm"                  # "layernorm" | "rmsnorm"
    use_bias: bool = True                         # biases in the layers' linear maps and norms
    ffn_type: str = "mlp"                         # "mlp" | "geglu"

    model_type: ClassVar[str] = "bert"
    # (layers, hidden) of the published checkpoints; heads = hidden / 64, FFN = 4 * hidden
    PRESETS: ClassVar[dict] = {
        "tiny":   dict(num_hidden_layers=2,  hidden_size=128,  num_attention_heads=2,  intermediate_size=512),
        "mini":   dict(num_hidden_layers=4,  hidden_size=256,  num_attention_heads=4,  intermediate_size=1024),
        "small":  dict(num_hidden_layers=4,  hidden_size=512,  num_attention_heads=8,  intermediate_size=2048),
        "medium": dict(num_hidden_layers=8,  hidden_size=512,  num_attention_heads=8,  intermediate_size=2048),
        "base":   dict(num_hidden_layers=12, hidden_size=768,  num_attention_heads=12, intermediate_size=3072),
        "large":  dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
        # Geiping & Goldstein, "Cramming: Training a Language Model on a Single GPU in One Day", 2022
        # (arXiv 2212.14034), what they kept (CRAMMED): pre-LN with a final norm, LayerNorm (RMSNorm gave
        # no gain), no bias in the linear layers, a gated GELU FFN whose up projection keeps BERT's 3072
        # width (so 1536 gated units here: they did not add parameters for the gate), no dropout in
        # pretraining. Not options here: their scaled sinusoidal positions, the MLM head without its
        # dense transform, and dropping NSP (use --objective mlm). `crammed-tiny` is the CPU-sized twin.
        "crammed":      dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=1536,
                             **CRAMMED),
        "crammed-tiny": dict(num_hidden_layers=2,  hidden_size=128, num_attention_heads=2,  intermediate_size=256,
                             **CRAMMED),
    }


# ----------------------------------------------------------------------------- outputs

class Output(NamedTuple):
    loss: Optional[torch.Tensor]       # scalar, None without labels
    logits: torch.Tensor               # MLM: (N, V) at the N predicted positions, or (B, T, V) without labels
    metrics: dict                      # detached scalars, e.g. {"mlm_acc": ...}
    seq_relationship_logits: Optional[torch.Tensor] = None  # (B, 2), NSP


def _mlm_loss(logits, labels, metrics):
    """Cross-entropy over the predicted positions; logits (N, V), labels (N,). bert_kernels.cross_entropy is
    F.cross_entropy with one (N, V) buffer instead of three."""
    loss = cross_entropy(logits, labels)
    metrics["mlm_loss"] = loss.detach()
    # = (argmax == label), up to ties; amax is ~10x faster than argmax on a CPU (no index to track)
    logits = logits.detach()
    metrics["mlm_acc"] = (logits.gather(-1, labels[:, None]).squeeze(-1) >= logits.amax(-1)).float().mean()
    return loss


# ----------------------------------------------------------------------------- blocks

class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = make_norm(config, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids):
        """ids (B, T) (positions may be (1, T)), or the (total,) real tokens of an unpadded layout."""
        x = self.word_embeddings(input_ids)                                    # (B, T, H) or (total, H)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))                                  # (B, T, H) or (total, H)

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


class BertSelfAttention(nn.Module):
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


class BertOutput(nn.Module):
    """A sublayer's output: projection back to H, dropout. Also holds the sublayer's norm, which BertLayer
    applies. The attention's is `attention.output` (from H), the feed-forward's `output` (from I)."""

    def __init__(self, config, in_size):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size, bias=config.use_bias)
        self.LayerNorm = make_norm(config, config.hidden_size, bias=config.use_bias)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h):
        return self.dropout(self.dense(h))                                      # (..., H)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertOutput(config, config.hidden_size)

    def forward(self, x, layout):
        return self.output(self.self(x, layout))                               # (..., H)


class BertIntermediate(nn.Module):
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


class BertLayer(nn.Module):
    """Attention, then feed-forward, each a residual sublayer with its norm placed after the sum (post-LN,
    BERT) or before the sublayer (pre_layernorm): x = LN(x + f(x)) or x = x + f(LN(x))."""

    def __init__(self, config):
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config, config.intermediate_size)
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


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([BertLayer(config) for _ in range(config.num_hidden_layers)])
        # pre-LN leaves the residual stream unnormalised: one norm after the last layer, for the heads
        self.final_layer_norm = (make_norm(config, config.hidden_size, bias=config.use_bias)
                                 if config.pre_layernorm else None)

    def forward(self, x, layout, keep=None):
        """keep: the positions the heads read (see BertLayer); the last layer computes only those."""
        for i, layer in enumerate(self.layer):
            x = layer(x, layout, keep if i == len(self.layer) - 1 else None)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x                                                                # (..., H)


class BertPooler(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return torch.tanh(self.dense(x[:, 0]))                                 # (B, H), from [CLS]


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.LayerNorm = make_norm(config, config.hidden_size)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))                         # (..., H)


class BertLMPredictionHead(nn.Module):
    """MLM head. The output matrix is the word-embedding matrix (tied), passed in by the caller."""

    def __init__(self, config):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, word_embeddings):
        return F.linear(self.transform(x), word_embeddings, self.bias)         # (..., V)


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x, word_embeddings):
        return self.predictions(x, word_embeddings)                            # (..., V)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


# ----------------------------------------------------------------------------- models

class BertPreTrainedModel(PreTrainedModel):
    """Weight init and the Hugging Face checkpoint layout (modeling.PreTrainedModel) for BERT's weights."""
    config_class = BertConfig
    base_model_prefix = "bert"
    _dropped_keys = PreTrainedModel._dropped_keys + ("cls.predictions.decoder.",)  # the tied output matrix


class BertModel(BertPreTrainedModel):
    """The encoder: token ids -> last hidden state (B, T, H). `pooler` gives the [CLS] vector."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.apply(self._init_weights)

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
        x = self.embeddings(*ids)                                               # (B, T, H) or (total, H)
        return layout.pad(self.encoder(x, layout, layout.gather(keep)))        # (B, T, H)


class BertForPreTraining(BertPreTrainedModel):
    """MLM + next-sentence prediction, as BERT was pretrained. Loss = MLM loss + NSP loss."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                next_sentence_label=None, document_ids=None):
        predicted = keep = None
        if labels is not None:                             # the heads read the masked tokens and [CLS] only
            predicted = labels != -100                                         # (B, T)
            keep = predicted.index_fill(1, labels.new_zeros(1), True)          # (B, T)
        h = self.bert(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=keep)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h_mlm, labels = h[predicted], labels[predicted]                    # (N, H), (N,): only masked tokens
        else:
            h_mlm = h
        logits = self.cls.predictions(h_mlm, self.bert.embeddings.word_embeddings.weight)  # (N, V) or (B, T, V)
        nsp_logits = self.cls.seq_relationship(self.bert.pooler(h))            # (B, 2)
        if labels is not None:
            loss = _mlm_loss(logits, labels, metrics)
        if next_sentence_label is not None:
            nsp_loss = F.cross_entropy(nsp_logits.float(), next_sentence_label)
            metrics["nsp_loss"] = nsp_loss.detach()
            metrics["nsp_acc"] = (nsp_logits.detach().argmax(-1) == next_sentence_label).float().mean()
            loss = nsp_loss if loss is None else loss + nsp_loss
        return Output(loss, logits, metrics, nsp_logits)


class BertForMaskedLM(BertPreTrainedModel):
    """MLM only (no pooler, no NSP), e.g. for --objective mlm."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        predicted = None if labels is None else labels != -100                 # (B, T): what the head reads
        h = self.bert(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=predicted)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h, labels = h[predicted], labels[predicted]                        # (N, H), (N,): only masked tokens
        logits = self.cls(h, self.bert.embeddings.word_embeddings.weight)      # (N, V) or (B, T, V)
        if labels is not None:
            loss = _mlm_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


class BertForSequenceClassification(BertPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear. num_labels = 1 is regression (MSE), else cross-entropy."""
    _fresh_keys = ("classifier.", "bert.pooler.")

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        h = self.bert(input_ids, attention_mask, token_type_ids, document_ids=document_ids)  # (B, T, H)
        logits = self.classifier(self.dropout(self.bert.pooler(h)))            # (B, num_labels)
        metrics = {}
        loss = None if labels is None else classification_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


# ----------------------------------------------------------------------------- what the tools use

FAMILY = Family(
    name="bert", config=BertConfig,
    pretraining={"mlm+nsp": BertForPreTraining, "mlm": BertForMaskedLM}, default_objective="mlm+nsp",
    masked_lm=BertForMaskedLM, mlm_head="cls.predictions.", classification=BertForSequenceClassification,
    tokenizer_kind="wordpiece",
    masking=dict(mlm_probability=0.15, mask_ratio=0.8, random_ratio=0.1),  # 80% [MASK], 10% random, 10% kept
    packed=False, position_offset=0, discriminator=None, discriminator_head=None,
    tokenizer_vocab_field=False, embedding_projection="never")
