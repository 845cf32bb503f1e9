"""Attention heads and Transformer layers as channel groups.

`AttentionHeads` says where one attention layer's heads are (and keeps
grouped-query attention consistent); the `Heads` handler makes a Keras
`MultiHeadAttention`'s heads one group, and the `Transformer` handler does
the same for keras_hub's Transformer layers (found by qualified name), with
their feed-forward units. Importing this module adds them to the handler
table of `prunemix.structured.handlers`.
"""

from __future__ import annotations

import keras
import numpy as np

from prunemix import _keras_compat
from prunemix.prunable import builtin_variable
from prunemix.structured import handlers
from prunemix.structured.handlers import ChannelHandler, apply

__all__ = ["AttentionHeads", "Heads", "Transformer"]


def _kernel(dense):
    return builtin_variable(dense, "kernel")


class AttentionHeads:
    """Where the heads of one attention layer are: its query, key, value
    and output projections (EinsumDense), the head axis of the first three
    kernels (the output kernel's is 0), and its numbers of query and
    key/value heads.

    Heads go in units that keep grouped-query attention consistent: with as
    many key/value heads as query heads, a unit is one head (its query, key
    and value slices and biases, and its rows of the output projection);
    with fewer, a unit is the query head at one position of every key/value
    group (its query slices and output rows), and the key/value heads stay.
    """

    def __init__(self, query, key, value, output, axis: int, num_query: int, num_kv: int):
        self.query, self.key, self.value, self.output = query, key, value, output
        self.axis, self.num_query, self.num_kv = axis, num_query, num_kv

    @classmethod
    def of_keras(cls, layer) -> AttentionHeads:
        """The heads of a built Keras `MultiHeadAttention` (or a subclass)."""
        q, k, v, o = _keras_compat.attention_projections(layer)
        return cls(q, k, v, o, 1, layer.num_heads, layer.num_heads)

    def connect(self, graph):
        """Ties the heads' weight slices; returns the space of query heads."""
        heads = graph.weight(self.query, _kernel(self.query), self.axis)
        graph.tie(heads, graph.weight(self.output, _kernel(self.output), 0))
        shared = self.num_kv == self.num_query
        for proj in (self.query, self.key, self.value) if shared else (self.query,):
            if proj is not self.query:
                graph.tie(heads, graph.weight(proj, _kernel(proj), self.axis))
            if getattr(proj, "bias", None) is not None:
                graph.tie(heads, graph.weight(proj, proj.bias, 0))
        if not shared:  # query head k * groups + g is unit g
            groups = self.num_query // self.num_kv
            graph.tie(heads.elements[np.arange(self.num_query) % groups], heads)
        return heads

    def silent(self, value_of) -> np.ndarray:
        """Per query head: whether it adds nothing (its output rows are
        zero, or, one head per unit, its value slice and bias are)."""
        n = self.num_query
        quiet = ~value_of(_kernel(self.output)).reshape(n, -1).any(axis=1)
        if self.num_kv == n:
            value = np.moveaxis(value_of(_kernel(self.value)), self.axis, 0).reshape(n, -1)
            dead = ~value.any(axis=1)
            if getattr(self.value, "bias", None) is not None:
                dead &= ~value_of(self.value.bias).reshape(n, -1).any(axis=1)
            quiet |= dead
        return quiet

    def kept(self, removed) -> tuple:
        """`(query heads, key/value heads)` left after the cut."""
        gone = removed(_kernel(self.output), 0)
        return self.num_query - gone, self.num_kv - (gone if self.num_kv == self.num_query else 0)


class Transformer(ChannelHandler):
    """A Transformer layer (keras_hub's `TransformerEncoder`,
    `TransformerDecoder`, and the Llama, Mistral, Qwen and Gemma decoder
    layers): its inputs and output keep their width (the residual stream);
    its feed-forward units are a group, and so are the heads of each of its
    attention layers (`AttentionHeads`).

    A unit is its column of the up (and gate) projection and bias and its
    row of the down projection; it adds nothing when its down row is zero,
    or its up (or gate) column and bias are zero where the activation maps
    0 to 0. `shrink` re-creates the layer with a smaller `intermediate_dim`,
    and fewer heads through `heads_keys` (Gemma's config names its head
    width), or else from its parts (`unroll`), or refuses (`why`).
    """

    ties_inputs = False

    def __init__(self, up: str, down: str, gate: str | None = None,
                 key: str = "intermediate_dim", activation=None, per_unit: int = 1,
                 attention=None, heads_keys: tuple = (), why: str = "", unroll=None):
        self.up, self.down, self.gate, self.key = up, down, gate, key
        # The gate's activation (None: the layer's `activation`), and how
        # much of `key` one unit is (Gemma's is twice its units).
        self.activation, self.per_unit = activation, per_unit
        # attention(layer) -> [AttentionHeads]; the config keys of query and
        # key/value heads, when the config expresses fewer heads; else why
        # not, and unroll(layer, part, removed, args, kwargs) -> outputs.
        self.attention, self.heads_keys, self.why, self.unroll = \
            attention, heads_keys, why, unroll

    def heads(self, layer) -> list:
        return self.attention(layer) if self.attention else []

    def match(self, layer, ins, outs):
        names = [self.up, self.down] + ([self.gate] if self.gate else [])
        if any(getattr(getattr(layer, n, None), "built", False) is False for n in names):
            return "layer type not understood"
        return {}

    def connect(self, graph, layer, ins, outs, info) -> None:
        for space in [*ins, *outs]:
            graph.block(space, f"next to layer '{layer.name}' (a Transformer layer keeps its "
                               "input and output width; its heads and feed-forward units "
                               "are groups)")
        up, down = getattr(layer, self.up), getattr(layer, self.down)
        gate = getattr(layer, self.gate) if self.gate else None
        units = graph.weight(up, _kernel(up), -1)
        for dense in (up, gate):
            if dense is None:
                continue
            if dense is not up:
                graph.tie(units, graph.weight(dense, _kernel(dense), -1))
            if dense.bias is not None:
                graph.tie(units, graph.weight(dense, dense.bias, 0))
        graph.tie(units, graph.weight(down, _kernel(down), 0))
        attention = self.heads(layer)
        info.update(units=units, up=up, down=down, gate=gate, attention=attention,
                    heads=[a.connect(graph) for a in attention])

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return np.full(size, np.nan)

    def unremovable(self, graph, layer, ins, info, values, value_of) -> np.ndarray:
        def silent(dense, activation):
            kernel = value_of(_kernel(dense))
            quiet = ~kernel.reshape(-1, kernel.shape[-1]).any(axis=0)
            bias = np.zeros(kernel.shape[-1]) if dense.bias is None else value_of(dense.bias)
            return quiet & (apply(activation, bias) == 0)

        up, gate = info["up"], info["gate"]
        if gate is None:
            quiet = silent(up, up.activation)
        else:  # down(activation(gate(x)) * up(x))
            activation = self.activation or layer.activation
            quiet = silent(gate, activation) | silent(up, keras.activations.linear)
        down = value_of(_kernel(info["down"]))
        quiet |= ~down.reshape(down.shape[0], -1).any(axis=1)
        speaking = [info["units"].elements[~quiet]]
        for attention, heads in zip(info["attention"], info["heads"], strict=True):
            speaking.append(heads.elements[~attention.silent(value_of)])
        return np.concatenate(speaking)

    def unexpressed(self, layer, removed) -> str | None:
        cut = [a for a in self.heads(layer) if a.kept(removed)[0] != a.num_query]
        if not cut or self.heads_keys:
            return None
        return f"{self.why} ({cut[0].num_query} -> {cut[0].kept(removed)[0]} heads)"

    def unrolled(self, layer, part, removed, args, kwargs):
        if self.unroll is None:
            return super().unrolled(layer, part, removed, args, kwargs)
        return self.unroll(self, layer, part, removed, args, kwargs)

    def keeps(self, layer, info, removed, rebuild: bool = True) -> tuple | None:
        if (self.unroll is not None and rebuild) or not self.unexpressed(layer, removed):
            return None
        if self.unroll is not None:
            return info["heads"], (f"keep their zeroed heads (as zeros): {self.why}, and a "
                                   "task keeps its class (shrink its backbone to rebuild the "
                                   "layers without them)")
        return info["heads"], (f"keep their zeroed heads (as zeros): {self.why}, and prunemix "
                               "cannot rebuild them from their parts")

    def resized(self, layer, config, kept, old, removed) -> dict:
        up = getattr(layer, self.up)
        gone = removed(_kernel(up), len(up.kernel.shape) - 1)
        if gone:
            config = {**config, self.key: config[self.key] - self.per_unit * gone}
        for attention in self.heads(layer)[:1] if self.heads_keys else []:
            heads = attention.kept(removed)
            if heads[0] != attention.num_query:
                config = {**config, **dict(zip(self.heads_keys, heads, strict=True))}
        return config


class Heads(ChannelHandler):
    """Keras MultiHeadAttention: its inputs and output keep their width (the
    residual stream); its heads are one group (`AttentionHeads`)."""

    def match(self, layer, ins, outs):
        return {}

    def connect(self, graph, layer, ins, outs, info) -> None:
        for space in [*ins, *outs]:
            graph.block(space, f"next to layer '{layer.name}' (attention keeps its input "
                               "and output width; its heads are a group of their own)")
        attention = AttentionHeads.of_keras(layer)
        info.update(attention=attention, heads=attention.connect(graph))

    def value(self, graph, layer, vin, size, info, value_of) -> np.ndarray:
        return np.full(size, np.nan)

    def unremovable(self, graph, layer, ins, info, values, value_of) -> np.ndarray:
        return info["heads"].elements[~info["attention"].silent(value_of)]

    def resized(self, layer, config, kept, old, removed) -> dict:
        heads = AttentionHeads.of_keras(layer).kept(removed)[0]
        return {**config, "num_heads": heads} if heads != layer.num_heads else config


def _unroll_keras_hub(handler, layer, part, removed, args, kwargs):
    """keras_hub's `TransformerEncoder`/`TransformerDecoder` as their parts:
    the same layer norms, dropouts and dense layers, and a Keras
    `MultiHeadAttention` with fewer heads of the same width per attention
    (padding masks as its `value_mask`, causal masking as
    `use_causal_mask`), added to the residual as the layer does."""
    import inspect

    bound = inspect.signature(layer.call).bind(*args, **kwargs).arguments
    decoder = "decoder_sequence" in bound
    x = bound["decoder_sequence" if decoder else "inputs"]
    unsupported = [k for k in ("self_attention_cache", "cross_attention_cache",
                               "return_attention_scores") if bound.get(k)]
    if unsupported or getattr(x, "_keras_mask", None) is not None:
        reason = f"it is called with {unsupported[0]}" if unsupported else \
            "its input carries a Keras mask"
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}) loses heads, and "
                         f"{reason}: prunemix rebuilds it from its parts only for plain "
                         "calls (sequence, padding and attention masks).")
    attention = {id(a.query): a for a in handler.heads(layer)}
    first = layer.normalize_first

    def block(x, prefix, value, value_mask, attention_mask, causal):
        mha = getattr(layer, f"_{prefix}_layer")
        heads = attention[id(mha._query_dense)].kept(removed)[0]
        norm = part(getattr(layer, f"_{prefix}_layer_norm"))
        residual = x
        x = norm(x) if first else x
        y = part(mha, {**mha.get_config(), "num_heads": heads},
                 keras.layers.MultiHeadAttention)(
            x, x if value is None else value, value_mask=value_mask,
            attention_mask=attention_mask, use_causal_mask=causal)
        y = part(getattr(layer, f"_{prefix}_dropout"))(y)
        x = keras.layers.Add()([y, residual])
        return x if first else norm(x)

    if decoder:
        x = block(x, "self_attention", None, bound.get("decoder_padding_mask"),
                  bound.get("decoder_attention_mask"), bound.get("use_causal_mask", True))
        if bound.get("encoder_sequence") is not None:
            x = block(x, "cross_attention", bound["encoder_sequence"],
                      bound.get("encoder_padding_mask"), bound.get("encoder_attention_mask"),
                      False)
    else:
        x = block(x, "self_attention", None, bound.get("padding_mask"),
                  bound.get("attention_mask"), False)
    up, down = getattr(layer, handler.up), getattr(layer, handler.down)
    norm = part(layer._feedforward_layer_norm)
    residual = x
    x = norm(x) if first else x
    units = up.units - removed(_kernel(up), 1)
    y = part(down)(part(up, {**up.get_config(), "units": units})(x))
    x = keras.layers.Add()([part(layer._feedforward_dropout)(y), residual])
    return x if first else norm(x)


def _rotary_heads(layer) -> list:
    """The grouped-query heads of Llama's, Mistral's and Qwen's attention."""
    attention = layer._self_attention_layer
    return [AttentionHeads(attention._query_dense, attention._key_dense,
                           attention._value_dense, attention._output_dense, 1,
                           layer.num_query_heads, layer.num_key_value_heads)]


def _keras_hub_heads(layer) -> list:
    return [AttentionHeads.of_keras(a) for a in (
        layer._self_attention_layer, getattr(layer, "_cross_attention_layer", None))
        if a is not None]


_FFN = {"up": "_feedforward_intermediate_dense", "down": "_feedforward_output_dense"}
_KERAS_HUB = {**_FFN, "attention": _keras_hub_heads, "unroll": _unroll_keras_hub,
              "why": "keras_hub derives its head width as hidden_dim // num_heads"}
# Llama, Mistral and Qwen: their heads are groups too, but `shrink` keeps
# them (zeros): the configs derive the head width, and their rotary attention
# has no Keras layer to rebuild it from.
_ROTARY = {**_FFN, "gate": "_feedforward_gate_dense", "attention": _rotary_heads,
           "why": "keras_hub derives its head width as hidden_dim // num_query_heads and "
                  "applies rotary embeddings inside its attention"}
handlers._BY_NAME.update({
    "keras_hub.src.layers.modeling.transformer_encoder.TransformerEncoder":
        Transformer(**_KERAS_HUB),
    "keras_hub.src.layers.modeling.transformer_decoder.TransformerDecoder":
        Transformer(**_KERAS_HUB),
    "keras_hub.src.models.llama.llama_decoder.LlamaTransformerDecoder": Transformer(**_ROTARY),
    "keras_hub.src.models.mistral.mistral_transformer_decoder.MistralTransformerDecoder":
        Transformer(**_ROTARY),
    "keras_hub.src.models.qwen.qwen_decoder.QwenTransformerDecoder": Transformer(**_ROTARY),
    # gelu(gating_ffw(x)) * gating_ffw_2(x); `intermediate_dim` is twice the
    # units. Its config names the head width: fewer heads keep the class.
    "keras_hub.src.models.gemma.gemma_decoder_block.GemmaDecoderBlock": Transformer(
        up="gating_ffw_2", down="ffw_linear", gate="gating_ffw",
        activation=keras.activations.gelu, per_unit=2,
        attention=lambda layer: [AttentionHeads(
            layer.attention.query_dense, layer.attention.key_dense,
            layer.attention.value_dense, layer.attention.output_dense, 0,
            layer.num_query_heads, layer.num_key_value_heads)],
        heads_keys=("num_query_heads", "num_key_value_heads")),
})


handlers._TABLE[keras.layers.MultiHeadAttention] = Heads()
