"""Long, weighted prompts for the CLIP text encoders of SD 1.5 and SDXL, as A1111 encodes them.

- The parsed prompt is tokenized fragment by fragment and cut into chunks of 75 tokens (the
  encoder's 77 less BOS and EOS). When a chunk is full and a comma sits within its last 20 tokens,
  the tail after that comma moves to the next chunk (A1111's `comma_padding_backtrack`), so a
  phrase is not split across two chunks. BREAK closes the current chunk early.
- Each chunk is padded to 77 (EOS, then the tokenizer's pad token, as diffusers pads) and encoded
  on its own; the chunks' hidden states are concatenated along the sequence (77 x chunks tokens).
- Emphasis "Original": each token's hidden state is multiplied by its weight, then the chunk is
  rescaled so its mean equals the unweighted mean (skipped where that mean is numerically zero, as
  after an untrained layer norm: the ratio would be noise). With every weight 1 nothing is touched, so a
  plain prompt of up to 75 tokens gives exactly diffusers' own `encode_prompt` embeddings.
- SDXL: both encoders' penultimate hidden states, concatenated per token as diffusers does; the
  pooled embedding is the second encoder's, from the first chunk.
- The negative prompt and the prompt are padded with empty chunks to the same count (the UNet
  batches them together under CFG).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipelines.prompts.embeddings import Embedding, split_on_embeddings, vectors_at
from pipelines.prompts.syntax import Fragment, is_break, parse_prompt

COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
PLACEHOLDER = 0  # the token id under an embedding's vectors (A1111's); never BOS/EOS, so pooling is unaffected


@dataclass(frozen=True)
class Chunk:
    """One encoder pass: the token ids (BOS, up to 75 prompt tokens, EOS, padding) and their weights."""

    ids: tuple[int, ...]
    weights: tuple[float, ...]
    length: int  # prompt tokens in it, without BOS/EOS/padding
    fixes: tuple[tuple[int, Embedding], ...] = ()  # (offset in `ids`, embedding): its vectors replace the placeholders there


def tokenize_chunks(tokenizer, fragments: list[Fragment], backtrack: int = COMMA_BACKTRACK,
                    embeddings: list[Embedding] = ()) -> list[Chunk]:
    """Cut a parsed prompt into padded chunks of the tokenizer's length (77 for CLIP).

    An embedding's trigger word becomes its vectors' count of placeholders, never split across chunks."""
    size = tokenizer.model_max_length - 2
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    pieces = [(piece, weight) for text, weight in fragments
              for piece in ([text] if is_break((text, weight)) else split_on_embeddings(text, list(embeddings)))]
    texts = [piece for piece, _ in pieces if isinstance(piece, str)]
    tokenized = iter(tokenizer(texts, truncation=False, add_special_tokens=False).input_ids if texts else [])

    chunks: list[Chunk] = []
    ids: list[int] = []
    weights: list[float] = []
    fixes: list[tuple[int, Embedding]] = []
    last_comma = -1

    def close() -> None:
        nonlocal ids, weights, fixes, last_comma
        filler = size - len(ids)
        chunks.append(Chunk(
            tuple([bos] + ids + [eos] + [pad] * filler),
            tuple([1.0] + weights + [1.0] + [1.0] * filler),
            len(ids),
            tuple((offset + 1, embedding) for offset, embedding in fixes),  # + 1: BOS
        ))
        ids, weights, fixes, last_comma = [], [], [], -1

    for piece, weight in pieces:
        if isinstance(piece, Embedding):
            if len(ids) + piece.count > size:
                close()
            fixes.append((len(ids), piece))
            ids += [PLACEHOLDER] * piece.count
            weights += [weight] * piece.count
            continue
        tokens = next(tokenized)
        if is_break((piece, weight)):
            close()
            continue
        for token in tokens:
            if token == comma:
                last_comma = len(ids)
            elif backtrack and len(ids) == size and last_comma != -1 and len(ids) - last_comma <= backtrack:
                cut = last_comma + 1
                moved = ids[cut:], weights[cut:], [(offset - cut, e) for offset, e in fixes if offset >= cut]
                ids, weights, fixes = ids[:cut], weights[:cut], [(offset, e) for offset, e in fixes if offset < cut]
                close()
                ids, weights, fixes = moved
            if len(ids) == size:
                close()
            ids.append(token)
            weights.append(weight)
    if ids or not chunks:
        close()
    return chunks


def empty_chunk(tokenizer) -> Chunk:
    return tokenize_chunks(tokenizer, [("", 1.0)])[0]


def apply_emphasis(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on (chunks, 77, C): scale each token, then restore each chunk's mean."""
    if bool((weights == 1).all()):
        return hidden
    values = hidden.float()
    original_mean = values.mean(dim=(1, 2), keepdim=True)
    values = values * weights.to(values.device, torch.float32)[:, :, None]
    new_mean = values.mean(dim=(1, 2), keepdim=True)
    # A mean at numerical zero (a layer norm without bias: untrained or tiny encoders) makes the ratio
    # noise, even inf; such a chunk keeps the plain scaling. Real CLIP means are ~10% of the magnitudes.
    scale = values.abs().mean(dim=(1, 2), keepdim=True)
    ratio = original_mean / new_mean
    usable = (original_mean.abs() > 1e-3 * scale) & (new_mean.abs() > 1e-3 * scale) & (ratio > 0) & ratio.isfinite()
    values = values * torch.where(usable, ratio, torch.ones_like(ratio))
    return values.to(hidden.dtype)


def _execution_device(module, fallback: torch.device) -> torch.device:
    try:
        from diffusers.utils.torch_utils import get_module_execution_device

        return get_module_execution_device(module)
    except Exception:  # noqa: BLE001 - an older diffusers: the run's device
        return fallback


def encode_chunks(text_encoder, chunks: list[Chunk], device: torch.device, penultimate: bool,
                  key: str = "clip_l", clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Hidden states (1, 77 x chunks, C) with emphasis, and the first chunk's pooled output if the encoder has one.

    `key` names the encoder for textual-inversion files ("clip_l", or SDXL's second "clip_g"); `clip_skip`: SD 1.5's
    layer from the end (A1111's "Clip skip", 1 = the last)."""
    ids = torch.tensor([chunk.ids for chunk in chunks], dtype=torch.long)
    weights = torch.tensor([chunk.weights for chunk in chunks])
    width = text_encoder.get_input_embeddings().embedding_dim
    fixes = [(row, offset, embedding.for_encoder(key, width)) for row, chunk in enumerate(chunks) for offset, embedding in chunk.fixes]
    with vectors_at(text_encoder, fixes):
        return _encode(text_encoder, chunks, ids, weights, device, penultimate, clip_skip)


def clip_skip_layers(text_encoder) -> int:
    """How many layers a clip skip can go back: the encoder's layer count (its first layer's output at most)."""
    return int(getattr(text_encoder.config, "num_hidden_layers", 1))


def _encode(text_encoder, chunks, ids, weights, device, penultimate, clip_skip=1):
    if penultimate:  # SDXL: both encoders' penultimate layer (diffusers' default, no clip skip)
        output = text_encoder(ids.to(_execution_device(text_encoder, device)), output_hidden_states=True)
        hidden = output.hidden_states[-2]
        pooled = output[0][:1] if output[0].ndim == 2 else None
    else:  # SD 1.5: the last layer after the final layer norm
        mask = None
        if getattr(text_encoder.config, "use_attention_mask", False):
            mask = torch.tensor([[1] * (chunk.length + 2) + [0] * (len(chunk.ids) - chunk.length - 2) for chunk in chunks]).to(device)
        if clip_skip > 1:  # A1111: the Nth layer from the end, then the final layer norm the last layer's output has
            output = text_encoder(ids.to(device), attention_mask=mask, output_hidden_states=True)
            layer = output.hidden_states[-min(clip_skip, clip_skip_layers(text_encoder))]
            text_model = getattr(text_encoder, "text_model", text_encoder)  # transformers < 5 nests the layers one level down
            hidden, pooled = text_model.final_layer_norm(layer), None
        else:
            hidden, pooled = text_encoder(ids.to(device), attention_mask=mask)[0], None
    hidden = apply_emphasis(hidden, weights)
    return hidden.reshape(1, -1, hidden.shape[-1]), pooled


def _pad_to(chunks: list[Chunk], count: int, tokenizer) -> list[Chunk]:
    return chunks + [empty_chunk(tokenizer)] * (count - len(chunks))


def _encoders(pipe) -> list[tuple[object, object]]:
    pairs = [(getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
             (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None))]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if tokenizer is not None and encoder is not None]


def _fragments_for(pipe, fragments: list[Fragment], tokenizer) -> list[Fragment]:
    """diffusers' textual inversion tokens (`load_textual_inversion`) become their multi-vector spelling."""
    convert = getattr(pipe, "maybe_convert_prompt", None)
    if convert is None or not getattr(tokenizer, "added_tokens_encoder", None):
        return fragments
    return [fragment if is_break(fragment) else (convert(fragment[0], tokenizer), fragment[1]) for fragment in fragments]


def _chunks_for(pipe, tokenizer, fragments: list[Fragment], embeddings: list[Embedding]) -> list[Chunk]:
    return tokenize_chunks(tokenizer, _fragments_for(pipe, fragments, tokenizer), embeddings=list(embeddings))


def end_of_text_row(pipe, prompt: str, embeddings: list[Embedding] = ()) -> int | None:
    """Where the first chunk's end-of-text token sits in the SD 1.5 hidden states `encode_weighted` returns (the
    row `CLIPTextModel` pools), counted as it tokenized them: a textual inversion takes its vectors' count of rows,
    not one per word of its trigger. None for a pipeline without a CLIP tokenizer."""
    encoders = _encoders(pipe)
    if not encoders:
        return None
    tokenizer = encoders[0][0]
    return _chunks_for(pipe, tokenizer, parse_prompt(prompt), embeddings)[0].length + 1  # + 1: the BOS token before the prompt's


def encode_weighted(pipe, prompt: str, negative: str, device: torch.device, batch_size: int, use_cfg: bool, sdxl: bool,
                    embeddings: list[Embedding] = (), clip_skip: int = 1) -> dict:
    """The pipeline keyword arguments (`prompt_embeds`, ... ) for `batch_size` images of an SD 1.5 or SDXL pipeline.

    `embeddings`: the textual inversions the prompts may name (`EmbeddingLibrary.used_in`); `clip_skip`: SD 1.5's
    text layer from the end (SDXL always reads its penultimate layers)."""
    parsed = {"positive": parse_prompt(prompt), "negative": parse_prompt(negative)}
    per_encoder = []
    for index, (tokenizer, encoder) in enumerate(_encoders(pipe)):
        chunks = {name: _chunks_for(pipe, tokenizer, fragments, embeddings) for name, fragments in parsed.items()}
        key = "clip_g" if sdxl and (index == 1 or getattr(pipe, "text_encoder", None) is None) else "clip_l"
        per_encoder.append((tokenizer, encoder, chunks, key))
    count = max(len(chunks[name]) for _, _, chunks, _ in per_encoder for name in (("positive", "negative") if use_cfg else ("positive",)))
    dtype = (pipe.text_encoder_2 if sdxl and getattr(pipe, "text_encoder_2", None) is not None else pipe.text_encoder).dtype

    def encode(name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        hidden, pooled = [], None
        for tokenizer, encoder, chunks, key in per_encoder:
            states, pooled_here = encode_chunks(encoder, _pad_to(chunks[name], count, tokenizer), device, penultimate=sdxl, key=key,
                                                clip_skip=1 if sdxl else clip_skip)
            hidden.append(states)
            pooled = pooled_here if pooled_here is not None else pooled
        embeds = torch.cat(hidden, dim=-1).to(dtype=dtype, device=device)
        return embeds.repeat(batch_size, 1, 1), None if pooled is None else pooled.repeat(batch_size, 1)

    with torch.no_grad():
        positive, pooled = encode("positive")
        negative_embeds, negative_pooled = encode("negative") if use_cfg else (None, None)
    if not sdxl:
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative_embeds}
    return {"prompt_embeds": positive, "negative_prompt_embeds": negative_embeds, "pooled_prompt_embeds": pooled.to(device),
            "negative_pooled_prompt_embeds": None if negative_pooled is None else negative_pooled.to(device)}


def token_count(tokenizer, prompt: str, embeddings: list[Embedding] = ()) -> int:
    """Prompt tokens as A1111's counter shows them (without BOS/EOS, BREAK padding included; a textual inversion
    counts its vectors)."""
    chunks = tokenize_chunks(tokenizer, parse_prompt(prompt), embeddings=list(embeddings))
    size = tokenizer.model_max_length - 2
    return size * (len(chunks) - 1) + chunks[-1].length


# -- benchmark row ---------------------------------------------------------------------------------


def prompt_encode_timings(pipe, device: torch.device, sdxl: bool = False, repeats: int = 5) -> dict:
    """Median seconds to encode a 75-token and a 150-token prompt (with CFG, an empty negative).

    For `bench --suite lora`: the row "a 150-token prompt's encode time vs a 75-token one".
    """
    tokenizer = _encoders(pipe)[0][0]
    words = "a red cat on a blue chair in a sunny garden oil painting detailed soft light".split()

    def prompt_of(tokens: int) -> str:
        text, index = "", 0
        while True:
            longer = f"{text} {words[index % len(words)]}".strip()
            if len(tokenizer(longer, add_special_tokens=False).input_ids) > tokens:
                return text
            text, index = longer, index + 1

    def timed(prompt: str) -> float:
        seconds = []
        for _ in range(repeats + 1):  # the first run warms up
            start = time.perf_counter()
            encode_weighted(pipe, prompt, "", device, 1, True, sdxl)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        return sorted(seconds[1:])[len(seconds[1:]) // 2]

    short, long = prompt_of(75), prompt_of(150)
    row = {"tokens_short": token_count(tokenizer, short), "tokens_long": token_count(tokenizer, long),
           "chunks_long": len(tokenize_chunks(tokenizer, parse_prompt(long))),
           "seconds_short": timed(short), "seconds_long": timed(long)}
    row["ratio"] = row["seconds_long"] / row["seconds_short"]
    return row
