"""The gated cross-encoder: a joint pass over query and document that starts out as the bi-encoder.

A cross-encoder fine-tuned from a bi-encoder's weights with a fresh [CLS] head starts far below the bi-encoder
(0.30 vs 0.61 nDCG@10 on TREC DL 2020 in our probes) and must climb back with scarce training. This graph cannot
start below it. Input is `[CLS] q [SEP] [CLS] d [SEP]` with segment ids 0 (query) / 1 (document); each segment's
positions restart at 0 and every token gets token type 0, exactly as the bi-encoder embeds each text on its own.
In every layer, each attention head mixes two attention patterns:

    probs = within_segment_probs + gate[layer, head] · (full_probs − within_segment_probs)

With all gates at 0 the two segments never see each other, so the segment mean-pools equal the bi-encoder's
embeddings, and the score `scale · cos(mean(q), mean(d)) + w·h[CLS]` (w = 0 at the start) ranks exactly as the
bi-encoder does. Training opens a gate only where looking across pays; the [CLS] term adds what cosine cannot.

The graph takes the engine's three inputs (input_ids, attention_mask, token_type_ids) and returns [batch, 1]
logits, so the torch and ONNX backends, the int8 path and the trainer handle it like any other checkpoint. The
pair template lives in the checkpoint's tokenizer.json, so the engine's pair encoder needs no special case.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ARCHITECTURE = "gated-cross-encoder"
CONFIG_KEY = "crossrank_architecture"
INITIAL_SCALE = 20.0  # cos / 0.05: the temperature sentence-transformers trains all-MiniLM-L6-v2 with


def is_gated(config: dict) -> bool:
    return config.get(CONFIG_KEY) == ARCHITECTURE


def fp16_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's weights as contiguous fp16 CPU tensors: how crossrank checkpoints are shipped (half the size;
    the engine loads them as fp32)."""
    return {name: tensor.detach().to("cpu", torch.float16).contiguous() for name, tensor in module.state_dict().items()}


class GatedCrossEncoder(nn.Module):
    """A BERT body run layer by layer with gated cross-segment attention and a cosine + [CLS] head."""

    uses_token_types = True  # the segment ids are a real input (they build the masks and positions)

    def __init__(self, config) -> None:  # noqa: ANN001 - a transformers BertConfig
        super().__init__()
        from transformers import BertModel

        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        self.num_heads = int(config.num_attention_heads)
        self.head_size = int(config.hidden_size) // self.num_heads
        self.cross_gates = nn.Parameter(torch.zeros(int(config.num_hidden_layers), self.num_heads))
        self.log_scale = nn.Parameter(torch.tensor(math.log(INITIAL_SCALE)))
        self.cls_head = nn.Linear(int(config.hidden_size), 1)
        nn.init.zeros_(self.cls_head.weight)
        nn.init.zeros_(self.cls_head.bias)
        self.gradient_checkpointing = False

    # ----- construction -----
    @classmethod
    def from_bi_encoder(cls, path: str | Path) -> GatedCrossEncoder:
        """Start from a mean-pooling bi-encoder checkpoint (all-MiniLM-L6-v2): gates closed, [CLS] term 0."""
        from transformers import BertConfig, BertModel

        body = BertModel.from_pretrained(str(path), dtype=torch.float32, local_files_only=True,
                                         add_pooling_layer=False)
        config = BertConfig.from_dict(body.config.to_dict())
        model = cls(config)
        model.bert.load_state_dict(body.state_dict())
        return model.eval()

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> GatedCrossEncoder:
        """Load a saved gated checkpoint (fp16 or fp32 safetensors) as fp32."""
        from safetensors.torch import load_file
        from transformers import BertConfig

        path = Path(path)
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        model = cls(BertConfig.from_dict(config))
        state = {name: tensor.float() for name, tensor in load_file(str(path / "model.safetensors")).items()}
        model.load_state_dict(state)
        return model.eval()

    @classmethod
    def weight_space_blend(cls, start: GatedCrossEncoder, tuned: GatedCrossEncoder, alpha: float
                           ) -> GatedCrossEncoder:
        """(1 − alpha)·start + alpha·tuned, parameter by parameter (WiSE-FT, Wortsman et al. 2022): fine-tuning
        toward one domain's teacher costs accuracy elsewhere, and averaging with the start point keeps much of
        the in-domain gain while giving back the start's robustness. Both models share this graph, so every
        alpha in [0, 1] is a model of the same shape; alpha 0 is `start`, 1 is `tuned`."""
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        begin, end = start.state_dict(), tuned.state_dict()
        if {name: value.shape for name, value in begin.items()} != {name: value.shape for name, value in end.items()}:
            raise ValueError("the two models differ in their parameters' names or shapes; only one graph blends")
        model = cls(tuned.config)
        model.load_state_dict({name: torch.lerp(value.float(), end[name].float(), alpha)
                               for name, value in begin.items()})
        return model.eval()

    def save(self, out: Path, tokenizer_dir: Path, max_length: int) -> Path:
        """fp16 safetensors, a BERT config marked as this architecture, and the tokenizer with the pair template."""
        from safetensors.torch import save_file

        out.mkdir(parents=True, exist_ok=True)
        save_file(fp16_state(self), str(out / "model.safetensors"), metadata={"format": "pt"})
        config = self.config.to_dict()
        for key in ("torch_dtype", "dtype", "architectures", "_name_or_path", "transformers_version", "id2label",
                    "label2id"):
            config.pop(key, None)
        config.update({CONFIG_KEY: ARCHITECTURE, "num_labels": 1, "dtype": "float16"})
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        write_pair_tokenizer(tokenizer_dir, out, max_length)
        return out

    # ----- forward -----
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        segment = token_type_ids
        real = attention_mask > 0
        query_length = ((segment == 0) & real).sum(dim=1, keepdim=True)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0) - query_length * segment
        hidden = self.bert.embeddings(input_ids=input_ids, position_ids=positions,
                                      token_type_ids=torch.zeros_like(input_ids))
        neg = torch.finfo(torch.float32).min
        keys = real[:, None, None, :]
        same_segment = segment[:, None, :, None] == segment[:, None, None, :]
        zero = torch.zeros((), dtype=torch.float32, device=input_ids.device)
        full_bias = torch.where(keys, zero, neg)
        segment_bias = torch.where(keys & same_segment, zero, neg)
        for index, layer in enumerate(self.bert.encoder.layer):
            gate = self.cross_gates[index].view(1, -1, 1, 1)
            if self.gradient_checkpointing and self.training:
                hidden = torch.utils.checkpoint.checkpoint(self._layer, layer, hidden, full_bias, segment_bias, gate,
                                                           use_reentrant=False)
            else:
                hidden = self._layer(layer, hidden, full_bias, segment_bias, gate)
        query_mask = (real & (segment == 0)).unsqueeze(-1).to(hidden.dtype)
        document_mask = (real & (segment == 1)).unsqueeze(-1).to(hidden.dtype)
        query = (hidden * query_mask).sum(1) / query_mask.sum(1).clamp(min=1.0)
        document = (hidden * document_mask).sum(1) / document_mask.sum(1).clamp(min=1.0)
        cosine = F.cosine_similarity(query.float(), document.float(), dim=-1, eps=1e-8)
        return (self.log_scale.exp() * cosine).unsqueeze(-1) + self.cls_head(hidden[:, 0].float())

    def _layer(self, layer: nn.Module, hidden: torch.Tensor, full_bias: torch.Tensor, segment_bias: torch.Tensor,
               gate: torch.Tensor) -> torch.Tensor:
        """One BERT layer with the gated attention mix; the projections, LayerNorms and FFN are the layer's own."""
        attention = layer.attention.self
        batch, length, _ = hidden.shape

        def heads(projection: nn.Module) -> torch.Tensor:
            return projection(hidden).view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

        query, key, value = heads(attention.query), heads(attention.key), heads(attention.value)
        scores = (query @ key.transpose(-1, -2)).float() / math.sqrt(self.head_size)
        within = torch.softmax(scores + segment_bias, dim=-1)
        full = torch.softmax(scores + full_bias, dim=-1)
        probs = attention.dropout(within + gate * (full - within)).to(value.dtype)
        context = (probs @ value).transpose(1, 2).reshape(batch, length, self.num_heads * self.head_size)
        attended = layer.attention.output(context, hidden)
        return layer.output(layer.intermediate(attended), attended)


def pair_tokenizer(source: Path):  # noqa: ANN201 - a tokenizers.Tokenizer
    """The source tokenizer with the pair template `[CLS] q [SEP] [CLS]:1 d:1 [SEP]:1` the graph expects."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
    cls_token, sep_token = "[CLS]", "[SEP]"
    special = [(token, tokenizer.token_to_id(token)) for token in (cls_token, sep_token)]
    if any(token_id is None for _, token_id in special):
        raise ValueError(f"{source}: the gated cross-encoder needs a BERT-style tokenizer with [CLS] and [SEP]")
    tokenizer.post_processor = TemplateProcessing(
        single=f"{cls_token} $A {sep_token}", pair=f"{cls_token} $A {sep_token} {cls_token}:1 $B:1 {sep_token}:1",
        special_tokens=special)
    return tokenizer


def write_pair_tokenizer(source: Path, out: Path, max_length: int) -> None:
    """Write the pair tokenizer and the tokenizer files beside it, with model_max_length set to `max_length`."""
    tokenizer = pair_tokenizer(source)
    if source.resolve() != out.resolve():
        for name in ("vocab.txt", "special_tokens_map.json"):
            if (source / name).is_file():
                shutil.copy(source / name, out / name)
    tokenizer.save(str(out / "tokenizer.json"))
    config_file = source / "tokenizer_config.json"
    settings = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    settings["model_max_length"] = max_length
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
