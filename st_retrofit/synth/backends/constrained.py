"""Decoding constrained to a JSON schema, for local transformers models: every answer parses and validates.

Left free, a small local model (SmolLM2-135M) breaks the JSON of about a third of its answers; with the grammar the
one format failure left is an answer cut off at ``max_new_tokens`` (a model that loops, or a script its tokenizer
spends many tokens on), and what validation rejects otherwise is content (language, length, copying).
The grammar engine is llguidance (the one behind llama.cpp's and vLLM's structured outputs): it compiles the
schema and computes each step's allowed tokens; this module only feeds it a transformers ``generate`` call.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from transformers import LogitsProcessor

from st_retrofit.extras import require_module

if TYPE_CHECKING:
    import torch


def closed_objects(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that does not say otherwise."""
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    closed = {
        # ``properties`` maps names to schemas: the names are not keywords, only the schemas are closed.
        key: {n: closed_objects(v) for n, v in value.items()} if key == "properties" else closed_objects(value)
        for key, value in schema.items()
    }
    if schema.get("type") == "object" or "properties" in schema:
        closed.setdefault("additionalProperties", False)
    return closed


class SchemaGrammars:
    """llguidance's tokenizer for one model and the compiled grammar of each schema (both built once).

    Args:
        tokenizer: the model's fast tokenizer.
        vocab_size: the model's logit width (can exceed the tokenizer's, with padding rows).
    """

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._llguidance = require_module("llguidance", "constrained JSON decoding (synth.backend.response_format)")
        hf = require_module("llguidance.hf", "constrained JSON decoding (synth.backend.response_format)")
        self.tokenizer = hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.eos_token_id = tokenizer.eos_token_id
        self._grammars: dict[str, str] = {}

    def matcher(self, schema: dict[str, Any]) -> Any:
        """A fresh matcher for ``schema``, as compact JSON with only the properties the schema names: free
        whitespace or extra keys would let a model wander until ``max_new_tokens`` cuts the object short."""
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = self._llguidance.LLMatcher.grammar_from_json_schema(
                closed_objects(schema), defaults={"whitespace_flexible": False}
            )
        matcher = self._llguidance.LLMatcher(self.tokenizer, self._grammars[key], log_level=0)
        if matcher.is_error():
            raise ValueError(f"the output_schema cannot be compiled to a grammar: {matcher.get_error()}")
        return matcher

    def processor(self, schemas: list[dict[str, Any] | None], prompt_length: int) -> JsonSchemaLogitsProcessor:
        """The logits processor for one ``generate`` batch, one schema per row (``None`` = unconstrained)."""
        matchers = [self.matcher(schema) if schema else None for schema in schemas]
        return JsonSchemaLogitsProcessor(matchers, prompt_length, self.eos_token_id)


class JsonSchemaLogitsProcessor(LogitsProcessor):
    """Masks every token that would leave a row's JSON schema (transformers' ``logits_processor`` hook).

    Each step first feeds the row's matcher the token sampled last, then keeps only the tokens it allows. A row
    whose JSON is complete may only end (EOS); a matcher in an error state (a token forced past the grammar, as
    the last token at ``max_new_tokens``) also ends its row, and validation rejects the unfinished answer.

    Args:
        matchers: llguidance matchers, one per row (``None`` = that row is unconstrained).
        prompt_length: the (padded) prompt length: tokens past it are the answer.
        eos_token_id: the token that ends a finished row.
    """

    def __init__(self, matchers: list[Any], prompt_length: int, eos_token_id: int) -> None:
        import llguidance.numpy

        self.matchers, self.prompt_length, self.eos_token_id = matchers, prompt_length, eos_token_id
        self._numpy = llguidance.numpy

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import numpy as np
        import torch

        if input_ids.shape[1] > self.prompt_length:
            for matcher, token in zip(self.matchers, input_ids[:, -1].tolist(), strict=True):
                if matcher is not None and not matcher.is_stopped():
                    matcher.consume_token(token)
        bitmask = self._numpy.allocate_token_bitmask(len(self.matchers), scores.shape[1])
        for row, matcher in enumerate(self.matchers):
            if matcher is not None and not matcher.is_error():
                self._numpy.fill_next_token_bitmask(matcher, bitmask, row)
        bias = np.zeros(tuple(scores.shape), dtype=np.float32)
        self._numpy.apply_token_bitmask_inplace(bias, bitmask)
        for row, matcher in enumerate(self.matchers):
            if matcher is not None and matcher.is_error():
                bias[row] = -np.inf
                bias[row, self.eos_token_id] = 0.0
        return scores + torch.from_numpy(bias).to(scores.device, scores.dtype)
