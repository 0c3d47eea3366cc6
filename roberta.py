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
with the same outputs (modeling.py does the reading and writing). The blocks shared with
bert.py are copied under `# Copied from` markers, checked by tests/test_copies.py. This file
depends only on torch, `bert_kernels` and modeling.py.

Padded batches run on their real tokens only and `document_ids` packs several documents in a row,
as in bert.py (see its docstring): `RobertaModel.forward(input_ids, attention_mask=None,
token_type_ids=None, position_ids=None, document_ids=None, keep=None)`; config.unpad = False keeps the
dense path.
Packed, each document's positions restart at padding_idx + 1.

The efficient-BERT options (pre_layernorm, norm_type, use_bias, ffn_type) and the `crammed` presets
are bert.py's (see its docstring); norm_type also reaches the embeddings' and lm_head's norms.
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
class RobertaConfig(Config):
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
    # Copied from bert.BertConfig.classifier_dropout..ffn_type with Bert->Roberta,the module docstring->bert.py's docstring
    classifier_dropout: Optional[float] = None   # None = hidden_dropout_prob
    num_labels: int = 2                           # for RobertaForSequenceClassification; 1 = regression
    unpad: bool = True                            # run padded batches on their real tokens only (see bert.py's docstring)
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


# ----------------------------------------------------------------------------- outputs

class Output(NamedTuple):
    """bert.Output without its NSP logits: RoBERTa has no NSP."""
    loss: Optional[torch.Tensor]       # scalar, None without labels
    logits: torch.Tensor               # MLM: (N, V) at the N predicted positions, or (B, T, V) without labels
    metrics: dict                      # detached scalars, e.g. {"mlm_acc": ...}


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

    def forward(self, input_ids, token_type_ids, position_ids):
        """ids (B, T), or the (total,) real tokens of an unpadded layout."""
        x = self.word_embeddings(input_ids)                                    # (B, T, H) or (total, H)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))                                  # (B, T, H) or (total, H)

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

    def forward(self, x, layout):
        """x (B, T, H) or (total, H), as `layout` says."""
        heads = (*x.shape[:-1], self.num_heads, self.head_dim)
        q, k, v = (proj(x).view(heads) for proj in (self.query, self.key, self.value))   # (..., nh, hd) each
        y = self_attention(q, k, v, layout, dropout_p=self.dropout_p if self.training else 0.0)
        return y.flatten(-2)                                                    # (..., H)


# Copied from bert.BertOutput with Bert->Roberta
class RobertaOutput(nn.Module):
    """A sublayer's output: projection back to H, dropout. Also holds the sublayer's norm, which RobertaLayer
    applies. The attention's is `attention.output` (from H), the feed-forward's `output` (from I)."""

    def __init__(self, config, in_size):
        super().__init__()
        self.dense = nn.Linear(in_size, config.hidden_size, bias=config.use_bias)
        self.LayerNorm = make_norm(config, config.hidden_size, bias=config.use_bias)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, h):
        return self.dropout(self.dense(h))                                      # (..., H)


# Copied from bert.BertAttention with Bert->Roberta
class RobertaAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = RobertaSelfAttention(config)
        self.output = RobertaOutput(config, config.hidden_size)

    def forward(self, x, layout):
        return self.output(self.self(x, layout))                               # (..., H)


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
            a, b = self.dense(x).chunk(2, dim=-1)                               # (..., I) each
            return self.act(a) * b                                              # (..., I)
        return self.act(self.dense(x))                                          # (..., I)


# Copied from bert.BertLayer with Bert->Roberta
class RobertaLayer(nn.Module):
    """Attention, then feed-forward, each a residual sublayer with its norm placed after the sum (post-LN,
    BERT) or before the sublayer (pre_layernorm): x = LN(x + f(x)) or x = x + f(LN(x))."""

    def __init__(self, config):
        super().__init__()
        self.attention = RobertaAttention(config)
        self.intermediate = RobertaIntermediate(config)
        self.output = RobertaOutput(config, config.intermediate_size)
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


# Copied from bert.BertEncoder with Bert->Roberta
class RobertaEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList([RobertaLayer(config) for _ in range(config.num_hidden_layers)])
        # pre-LN leaves the residual stream unnormalised: one norm after the last layer, for the heads
        self.final_layer_norm = (make_norm(config, config.hidden_size, bias=config.use_bias)
                                 if config.pre_layernorm else None)

    def forward(self, x, layout, keep=None):
        """keep: the positions the heads read (see RobertaLayer); the last layer computes only those."""
        for i, layer in enumerate(self.layer):
            x = layer(x, layout, keep if i == len(self.layer) - 1 else None)
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        return x                                                                # (..., H)


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


# ----------------------------------------------------------------------------- models

class RobertaPreTrainedModel(PreTrainedModel):
    """Weight init and the Hugging Face checkpoint layout (modeling.PreTrainedModel) for RoBERTa's weights."""
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    _fresh_keys = ("pooler.",)  # may be missing, initialised fresh: no RoBERTa objective trains the pooler
    _dropped_keys = PreTrainedModel._dropped_keys + ("lm_head.decoder.",)  # the tied output matrix
    _tied_bias = "lm_head.decoder.bias"                                  # old checkpoints' name of lm_head.bias


# Copied from bert.BertModel with Bert->Roberta,[CLS]-><s>,(1, T) or (B, T)->(B, T)
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
        only positions the caller will read (e.g. the masked ones); the last layer's feed-forward skips the
        others, whose outputs are zeros."""
        layout = Layout.of(input_ids, attention_mask, document_ids, self.config.unpad)   # padded or unpadded
        if position_ids is None:
            position_ids = self.embeddings.make_position_ids(input_ids, layout.starts)  # (B, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        ids = [layout.gather(t) for t in (input_ids, token_type_ids, position_ids)]    # (B, T) or (total,)
        x = self.embeddings(*ids)                                               # (B, T, H) or (total, H)
        return layout.pad(self.encoder(x, layout, layout.gather(keep)))        # (B, T, H)


class RobertaForMaskedLM(RobertaPreTrainedModel):
    """RoBERTa's pretraining model: MLM only, no pooler, no NSP."""
    _dropped_keys = RobertaPreTrainedModel._dropped_keys + ("pooler.",)   # published checkpoints carry an unused pooler

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.apply(self._init_weights)

    # Copied from bert.BertForMaskedLM.forward with bert->roberta,self.cls->self.lm_head
    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, document_ids=None):
        predicted = None if labels is None else labels != -100                 # (B, T): what the head reads
        h = self.roberta(input_ids, attention_mask, token_type_ids, document_ids=document_ids, keep=predicted)  # (B, T, H)
        metrics, loss = {}, None
        if labels is not None:
            h, labels = h[predicted], labels[predicted]                        # (N, H), (N,): only masked tokens
        logits = self.lm_head(h, self.roberta.embeddings.word_embeddings.weight)      # (N, V) or (B, T, V)
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
        metrics = {}
        loss = None if labels is None else classification_loss(logits, labels, metrics)
        return Output(loss, logits, metrics)


# ----------------------------------------------------------------------------- what the tools use

FAMILY = Family(
    name="roberta", config=RobertaConfig, pretraining={"mlm": RobertaForMaskedLM}, default_objective="mlm",
    masked_lm=RobertaForMaskedLM, mlm_head="lm_head.", classification=RobertaForSequenceClassification,
    tokenizer_kind="bpe",
    masking=dict(mlm_probability=0.15, mask_ratio=0.8, random_ratio=0.1),  # BERT's, redrawn each epoch (dynamic)
    packed=True,                      # FULL-SENTENCES: rows packed with contiguous sentences, no padding
    position_offset=2,                # positions 0..padding_idx never hold a token: seq_len <= max_pos - 2
    discriminator=None, discriminator_head=None, tokenizer_vocab_field=False, embedding_projection="never")
