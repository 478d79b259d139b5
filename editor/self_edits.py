"""What a candidate trains on: a self-edit built from the text written for its trigger.

:func:`passage_self_edits` has the model write K self-edits of a passage in one batched call;
:func:`passage_self_edit` turns one written text into the lines and training sequences (the
filter, the passage's own sentences under its title); :func:`corrections` builds an examples
trigger's corrections. The writer (:mod:`seal.editor.writer`) and the reflect stage
(:mod:`seal.editor.stages`) both build self-edits here.

    >>> from types import SimpleNamespace
    >>> e = passage_self_edit("Paris is in France.", SimpleNamespace(passage="Paris is in France.", title="Paris"),
    ...                       style="rewrite", restate=True)
    >>> e.lines, e.restated, e.sequences
    (['Paris is in France.'], ['Paris is in France.'], ['Paris\\nParis is in France.', 'Paris\\nParis is in France.', 'Paris\\nParis is in France.'])
"""

from __future__ import annotations

from .candidate import SelfEdit


def passage_self_edits(model, tok, trigger, req, gen) -> list[SelfEdit]:
    from .reflect import generate_self_edits, self_edit_prompt

    raw_edits = generate_self_edits(model, tok, trigger.passage, trigger.title, style=req.style, k=req.candidates,
                                    temperature=req.temperature, top_p=req.top_p,
                                    max_new_tokens=req.max_new_tokens, seed=req.seed, **gen)
    prompt = self_edit_prompt(tok, trigger.passage, trigger.title, style=req.style)
    return [passage_self_edit(raw, trigger, style=req.style, prompt=prompt, filter_lines=req.filter_lines,
                              restate=req.restate) for raw in raw_edits]


def passage_self_edit(text: str, trigger, *, style: str, prompt: str | None = None,
                      filter_lines: bool = False, restate: bool = False) -> SelfEdit:
    """A passage's self-edit from the text written for it: its lines (without the ones the passage
    does not support, when ``filter_lines``), the passage's own sentences when ``restate``, and
    the training sequences they make."""
    from .placebo import sentences
    from .reflect import build_training_sequences, filter_supported_lines, split_self_edit_lines

    lines, dropped = split_self_edit_lines(text), None
    if filter_lines:
        kept = filter_supported_lines(lines, trigger.passage)
        lines, dropped = kept, [line for line in lines if line not in kept]
    restated = sentences(trigger.passage) if restate else None
    return SelfEdit(style=style, prompt=prompt, generated=text, lines=lines, dropped=dropped, restated=restated,
                    sequences=build_training_sequences(trigger.passage, trigger.title, lines + (restated or [])))


def corrections(model, tok, trigger, req, gen) -> list[SelfEdit]:
    from .reflect import corrections_self_edit

    edits = []
    for i in range(req.candidates):
        c = corrections_self_edit(model, tok, trigger.examples, temperature=req.temperature, top_p=req.top_p,
                                  seed=req.seed + i, **gen)
        # When the model already gets every example right, train on all of them.
        sequences = c.sequences or corrections_self_edit(model, tok, trigger.examples, only_wrong=False,
                                                         n_rephrasings=0, **gen).sequences
        edits.append(SelfEdit(style="corrections", records=c.records, sequences=sequences))
    return edits


__all__ = ["passage_self_edits", "passage_self_edit", "corrections"]
