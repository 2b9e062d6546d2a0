"""The procedural Shapes world's language: its vocabulary (`vocab`), its scenes (`scene`),
the captions that describe them and the parser that reads a prompt back (`captions`).

It lives in the engine because serving reads prompts with it: a model whose config says
`prompt_rewrite: shapes` is given `captions.canonical_prompt(prompt)`, the canonical caption of
what the prompt asks. `distill` renders, trains on and evaluates the same world from here.
"""
