"""Tokenizers without a hub: a tiny byte-level BPE trained offline for the ``smoke`` models."""

from __future__ import annotations

import functools

from featx.data.sample import FILLER, PLACES

EOS = "<|endoftext|>"


@functools.cache
def tiny_bpe(vocab_size: int = 512):
    """A deterministic byte-level BPE (trained in ~0.1 s) wrapped as a transformers tokenizer.

    It has no pad token on purpose, like GPT-2 and LLaMA: featx must fall back to EOS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = list(PLACES) + list(FILLER) + [
        "a red green blue yellow purple orange black white circle square triangle stripe on a background",
        "Geometric study no. of the photograph in the museum next to a river at a train station",
    ]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, model_max_length=512)
