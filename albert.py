"""ALBERT: BERT with a factorized embedding, one set of layer weights shared by every layer, and SOP.

Lan, Chen, Goodman, Gimpel, Sharma, Soricut, "ALBERT: A Lite BERT for Self-supervised Learning of
Language Representations", ICLR 2020. https://arxiv.org/abs/1909.11942

What ALBERT changes relative to BERT (bert.py), and why:
  factorized embedding   tokens are embedded in a small space E (128), then one linear map E -> H
                         (`embedding_hidden_mapping_in`): V x E + E x H instead of V x H parameters,
                         since the vocabulary matrix need not grow with the hidden size. The MLM head
                         maps H -> E and reuses the (V, E) word embeddings as its output matrix.
  cross-layer sharing    the encoder owns `num_hidden_groups` groups of `inner_group_num` layers (1 x 1
                         in every published model) and runs `num_hidden_layers` steps; step i uses group
                         int(i / (num_hidden_layers / num_hidden_groups)), as `transformers` does. Depth
                         costs compute, not parameters: ALBERT-large has 18M parameters, BERT-large 334M.
  sentence-order         SOP replaces NSP: B follows A in order (label 0) or the two are swapped (1), so
  prediction             the task is coherence, not the topic cues that make NSP easy.
  no dropout             the published v2 models train without dropout (all dropout probabilities 0).
  gelu_new               the tanh approximation of GELU, as in the original TensorFlow code.
  vocabulary             a 30000-token SentencePiece Unigram vocabulary (tokenizer.py kind "unigram").
The paper also masks n-grams of up to 3 tokens for MLM; data.py masks single tokens, as for BERT.

Parameter names are those of Hugging Face `transformers`, so `from_pretrained` reads a published
checkpoint directory and `save_pretrained` writes one that `transformers` loads with the same
outputs (modeling.py does the reading and writing). This file depends only on torch, `bert_kernels`
and modeling.py.

Padded batches run on their real tokens only and `document_ids` packs several documents in a row,
as in bert.py (see its docstring): `AlbertModel.forward(input_ids, attention_mask=None,
token_type_ids=None, position_ids=None, document_ids=None, keep=None)`; config.unpad = False keeps the
dense path.

The efficient-BERT options (pre_layernorm, norm_type, use_bias, ffn_type) and the `crammed` presets
are bert.py's (see its docstring), written here for ALBERT's own layer: with pre_layernorm,
`attention.LayerNorm` and `full_layer_layer_norm` normalise their sublayer's input, and
`encoder.final_layer_norm` follows the last step.
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
class AlbertConfig(Config):
    # The defaults are transformers' (ALBERT-xxlarge), so a config.json that leaves a key out
    # means here what it means there. Use a preset for the other sizes.
    vocab_size: int = 30000
    embedding_size: int = 128                     # E, the factorized embedding size
    hidden_size: int = 4096                       # H
    num_hidden_layers: int = 12                   # layer steps (depth), not distinct layers
    num_hidden_groups: int = 1                    # distinct groups of weights the steps share
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1                      # layers in each group
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    classifier_dropout_prob: Optional[float] = 0.1   # SOP and classifier heads; None = hidden_dropout_prob
    # Copied from bert.BertConfig.num_labels..ffn_type with Bert->Albert,the module docstring->bert.py's docstring
    num_labels: int = 2                           # for AlbertForSequenceClassification; 1 = regression
    unpad: bool = True                            # run padded batches on their real tokens only (see bert.py's docstring)
    # efficient-BERT options (see bert.py's docstring); the defaults are the published architecture
    pre_layernorm: bool = False                   # norm before each sublayer, and a final norm
    norm_type: str = "layernorm"                  # "layernorm" | "rmsnorm"
    use_bias: bool = True                         # biases in the layers' linear maps and norms
    ffn_type: str = "mlp"                         # "mlp" | "geglu"

    model_type: ClassVar[str] = "albert"
    # The published sizes (Table 1 of the paper, heads and FFN from the released configs), all with E = 128.
    # tiny and mini are CPU-sized, with BERT's names and sizes, so train.py and the tests stay generic.
    PRESETS: ClassVar[dict] = {
        "tiny":    dict(num_hidden_layers=2,  hidden_size=128,  num_attention_heads=2,  intermediate_size=512),
        "mini":    dict(num_hidden_layers=4,  hidden_size=256,  num_attention_heads=4,  intermediate_size=1024),
        "base":    dict(num_hidden_layers=12, hidden_size=768,  num_attention_heads=12, intermediate_size=3072),
        "large":   dict(num_hidden_layers=24, hidden_size=1024, num_attention_heads=16, intermediate_size=4096),
        "xlarge":  dict(num_hidden_layers=24, hidden_size=2048, num_attention_heads=16, intermediate_size=8192),
        "xxlarge": dict(num_hidden_layers=12, hidden_size=4096, num_attention_heads=64, intermediate_size=16384),
        # Cramming's architecture (Geiping & Goldstein 2022) on ALBERT-base's sizes (E = 128, one shared
        # layer, gelu_new as the gate's GELU); see bert.py's PRESETS. ALBERT v2 has no dropout anyway.
        "crammed":      dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=1536,
                             **CRAMMED),
        "crammed-tiny": dict(num_hidden_layers=2,  hidden_size=128, num_attention_heads=2,  intermediate_size=256,
                             **CRAMMED),
    }

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers:
            raise ValueError(f"num_hidden_groups {self.num_hidden_groups} must lie in [1, num_hidden_layers "
                             f"= {self.num_hidden_layers}]: a group that no layer uses is never trained")
        if self.inner_group_num < 1:
            raise ValueError(f"inner_group_num {self.inner_group_num} must be at least 1")


# ----------------------------------------------------------------------------- outputs

# Copied from bert.Output with seq_relationship_logits->sop_logits,NSP->SOP
class Output(NamedTuple):
    loss: Optional[torch.Tensor]       # scalar, None without labels
    logits: torch.Tensor               # MLM: (N, V) at the N predicted positions, or (B, T, V) without labels
    metrics: dict                      # detached scalars, e.g. {"mlm_acc": ...}
    sop_logits: Optional[torch.Tensor] = None  # (B, 2), SOP


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


# ----------------------------------------------------------------------------- blocks

# Copied from bert.BertEmbeddings with Bert->Albert,hidden_size->embedding_size,H)->E)
class AlbertEmbeddings(nn.Module):
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


class AlbertAttention(nn.Module):
    """Self-attention and its output projection in one module (BERT uses three); it also holds the
    attention sublayer's norm, which AlbertLayer applies."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.key = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.value = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.dropout_p = config.attention_probs_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size, bias=config.use_bias)
        self.output_dropout = nn.Dropout(config.hidden_dropout_prob)
        self.LayerNorm = make_norm(config, config.hidden_size, bias=config.use_bias)

    def forward(self, x, layout):
        """x (B, T, H) or (total, H), as `layout` says."""
        heads = (*x.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (proj(x).view(heads) for proj in (self.query, self.key, self.value))   # (..., nh, hd) each
        y = self_attention(q, k, v, layout, dropout_p=self.dropout_p if self.training else 0.0)
        return self.output_dropout(self.dense(y.flatten(-2)))                  # (..., H)


class AlbertLayer(nn.Module):
    """Attention, then feed-forward, each a residual sublayer with its norm after the sum (post-LN) or before
    the sublayer (pre_layernorm), as BertLayer. With ffn_type "geglu", `ffn` is 2 x intermediate_size wide
    and the FFN is act(x W_a) * (x W_b), then `ffn_output`."""

    def __init__(self, config):
        super().__init__()
        self.attention = AlbertAttention(config)
        self.gated = config.ffn_type == "geglu"
        width = 2 * config.intermediate_size if self.gated else config.intermediate_size
        self.ffn = nn.Linear(config.hidden_size, width, bias=config.use_bias)
        self.activation = ACT2FN[config.hidden_act]
        self.ffn_output = nn.Linear(config.intermediate_size, config.hidden_size, bias=config.use_bias)
        # transformers defines this dropout but does not apply it; the original TensorFlow code does
        # (it only matters with hidden_dropout_prob > 0, i.e. not for the v2 models)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.full_layer_layer_norm = make_norm(config, config.hidden_size, bias=config.use_bias)
        self.pre_layernorm = config.pre_layernorm

    def forward(self, x, layout, keep=None):
        """x (B, T, H) or (total, H), as `layout` says. keep (x's leading shape) bool, optional: the only
        positions anyone reads after this layer; the feed-forward runs on them alone, the others are zeros."""
        x = self.sublayer(x, self.attention.LayerNorm, self.attention, layout)
        if keep is None:
            return self.sublayer(x, self.full_layer_layer_norm, self.feed_forward)  # (..., H)
        y = self.sublayer(x[keep], self.full_layer_layer_norm, self.feed_forward)   # (N, H)
        return torch.zeros_like(x).index_put((keep,), y)                        # (..., H)

    # Copied from bert.BertLayer.sublayer
    def sublayer(self, x, norm, f, *args):
        if self.pre_layernorm:
            return x + f(norm(x), *args)                                        # pre-LN
        return norm(x + f(x, *args))                                            # post-LN

    def feed_forward(self, h):
        if self.gated:
            a, b = self.ffn(h).chunk(2, dim=-1)                                 # (..., I) each
            h = self.activation(a) * b                                          # (..., I)
        else:
            h = self.activation(self.ffn(h))                                    # (..., I)
        return self.dropout(self.ffn_output(h))                                 # (..., H)


class AlbertLayerGroup(nn.Module):
    """inner_group_num layers with their own weights, applied in order (one layer in every published model)."""

    def __init__(self, config):
        super().__init__()
        self.albert_layers = nn.ModuleList([AlbertLayer(config) for _ in range(config.inner_group_num)])

    def forward(self, x, layout, keep=None):
        for i, layer in enumerate(self.albert_layers):        # keep: for the last layer only (see AlbertLayer)
            x = layer(x, layout, keep if i == len(self.albert_layers) - 1 else None)
        return x                                                                # (..., H)


class AlbertTransformer(nn.Module):
    """E -> H, then num_hidden_layers steps through num_hidden_groups shared groups of weights."""

    def __init__(self, config):
        super().__init__()
        self.num_hidden_layers = config.num_hidden_layers
        self.embedding_hidden_mapping_in = nn.Linear(config.embedding_size, config.hidden_size)
        self.albert_layer_groups = nn.ModuleList([AlbertLayerGroup(config) for _ in range(config.num_hidden_groups)])
        # pre-LN leaves the residual stream unnormalised: one norm after the last step, for the heads
        self.final_layer_norm = (make_norm(config, config.hidden_size, bias=config.use_bias)
                                 if config.pre_layernorm else None)

    def group_index(self, i):
        """The group step i uses: the steps are split into num_hidden_groups equal runs, as transformers does."""
        return int(i / (self.num_hidden_layers / len(self.albert_layer_groups)))

    def forward(self, x, layout, keep=None):
        """keep: the positions the heads read (see AlbertLayer); the last step computes only those."""
        x = self.embedding_hidden_mapping_in(x)                                 # (..., E) -> (..., H)
        for i in range(self.num_hidden_layers):
            last = i == self.num_hidden_layers - 1
            x = self.albert_layer_groups[self.group_index(i)](x, layout, keep if last else None)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x                                                                # (..., H)


class AlbertPooler(nn.Linear):
    """tanh(W h_[CLS]), the sentence vector for SOP and classification. A bare Linear in transformers
    (`albert.pooler.weight`), so it is one here too, with the [CLS] pick and the tanh in forward."""

    def __init__(self, config):
        super().__init__(config.hidden_size, config.hidden_size)

    def forward(self, x):
        return torch.tanh(super().forward(x[:, 0]))                            # (B, H), from [CLS]


class AlbertMLMHead(nn.Module):
    """H -> E transform, then the word embeddings (V, E) as the output matrix (tied, passed in), plus a bias."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.embedding_size)
        self.activation = ACT2FN[config.hidden_act]
        self.LayerNorm = make_norm(config, config.embedding_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x, word_embeddings):
        x = self.LayerNorm(self.activation(self.dense(x)))                     # (..., E)
        return F.linear(x, word_embeddings, self.bias)                         # (..., V)


class AlbertSOPHead(nn.Module):
    """Sentence-order prediction from the pooled [CLS]: 0 = A then B as in the text, 1 = swapped."""

    def __init__(self, config):
        super().__init__()
        p = config.classifier_dropout_prob
        self.dropout = nn.Dropout(p if p is not None else config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, 2)  # transformers sizes it num_labels, 2 by default

    def forward(self, pooled):
        return self.classifier(self.dropout(pooled))                           # (B, 2)


# ----------------------------------------------------------------------------- models

class AlbertPreTrainedModel(PreTrainedModel):
    """Weight init and the Hugging Face checkpoint layout (modeling.PreTrainedModel) for ALBERT's weights."""
    config_class = AlbertConfig
    base_model_prefix = "albert"
    _dropped_keys = PreTrainedModel._dropped_keys + ("predictions.decoder.",)  # the tied output matrix


# Copied from bert.BertModel with BertEncoder->AlbertTransformer,Bert->Albert,(B, T, H) or (total, H)->(B, T, E) or (total, E)
class AlbertModel(AlbertPreTrainedModel):
    """The encoder: token ids -> last hidden state (B, T, H). `pooler` gives the [CLS] vector."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__()
        self.config = config
        self.embeddings = AlbertEmbeddings(config)
        self.encoder = AlbertTransformer(config)
        self.pooler = AlbertPooler(config) if add_pooling_layer else None
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
        x = self.embeddings(*ids)                                               # (B, T, E) or (total, E)
        return layout.pad(self.encoder(x, layout, layout.gather(keep)))        # (B, T, H)


class AlbertForPreTraining(AlbertPreTrainedModel):
    """MLM + sentence-order prediction, as ALBERT was pretrained. Loss = MLM loss + SOP loss."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.albert = AlbertModel(config)
        self.predictions = AlbertMLMHead(config)
        self.sop_classifier = AlbertSOPHead(config)
        self.apply(self._init_weights)

    # Copied from bert.BertForPreTraining.forward with bert->albert,nsp->sop,next_sentence->sentence_order,
    #     cls.predictions->predictions,cls.seq_relationship->sop_classifier
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None,
                sentence_order_label=None, document_ids=None):
        predicted = keep = None
        if labels is not None:                             # the heads read the masked tokens and [CLS] only
            predicted = labels != -100                                         # (B, T)
            keep = predicted.index_fill(1, labels.new_zeros(1), True)          # (B, T)
        h = self.albert(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=keep)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h_mlm, labels = h[predicted], labels[predicted]                    # (N, H), (N,): only masked tokens
        else:
            h_mlm = h
        logits = self.predictions(h_mlm, self.albert.embeddings.word_embeddings.weight)  # (N, V) or (B, T, V)
        sop_logits = self.sop_classifier(self.albert.pooler(h))            # (B, 2)
        if labels is not None:
            loss = _mlm_loss(logits, labels, metrics)
        if sentence_order_label is not None:
            sop_loss = F.cross_entropy(sop_logits.float(), sentence_order_label)
            metrics["sop_loss"] = sop_loss.detach()
            metrics["sop_acc"] = (sop_logits.detach().argmax(-1) == sentence_order_label).float().mean()
            loss = sop_loss if loss is None else loss + sop_loss
        return Output(loss, logits, metrics, sop_logits)


# Copied from bert.BertForMaskedLM with bert->albert,BertOnlyMLMHead->AlbertMLMHead,Bert->Albert,self.cls->self.predictions,NSP->SOP
class AlbertForMaskedLM(AlbertPreTrainedModel):
    """MLM only (no pooler, no SOP), e.g. for --objective mlm."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.albert = AlbertModel(config, add_pooling_layer=False)
        self.predictions = AlbertMLMHead(config)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        predicted = None if labels is None else labels != -100                 # (B, T): what the head reads
        h = self.albert(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=predicted)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h, labels = h[predicted], labels[predicted]                        # (N, H), (N,): only masked tokens
        logits = self.predictions(h, self.albert.embeddings.word_embeddings.weight)      # (N, V) or (B, T, V)
        if labels is not None:
            loss = _mlm_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


# Copied from bert.BertForSequenceClassification with bert->albert,Bert->Albert,classifier_dropout->classifier_dropout_prob
class AlbertForSequenceClassification(AlbertPreTrainedModel):
    """Pooled [CLS] -> dropout -> linear. num_labels = 1 is regression (MSE), else cross-entropy."""
    _fresh_keys = ("classifier.", "albert.pooler.")

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.albert = AlbertModel(config)
        p = config.classifier_dropout_prob if config.classifier_dropout_prob is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.apply(self._init_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        h = self.albert(input_ids, attention_mask, token_type_ids, document_ids=document_ids)  # (B, T, H)
        logits = self.classifier(self.dropout(self.albert.pooler(h)))            # (B, num_labels)
        metrics = {}
        loss = None if labels is None else classification_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


# ----------------------------------------------------------------------------- what the tools use

FAMILY = Family(
    name="albert", config=AlbertConfig,
    pretraining={"mlm+sop": AlbertForPreTraining, "mlm": AlbertForMaskedLM}, default_objective="mlm+sop",
    masked_lm=AlbertForMaskedLM, mlm_head="predictions.", classification=AlbertForSequenceClassification,
    tokenizer_kind="unigram",
    masking=dict(mlm_probability=0.15, mask_ratio=0.8, random_ratio=0.1),  # BERT's, on single tokens
    packed=False, position_offset=0, discriminator=None, discriminator_head=None, tokenizer_vocab_field=False,
    embedding_projection="always")                    # embedding_hidden_mapping_in, E -> H
