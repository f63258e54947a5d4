"""Synthetic scenes: shapes on textured backgrounds, drawn from a seed, each image with five captions that
truly describe it and the scene it was drawn from, so that captions can be checked attribute by attribute.

- :mod:`mmgen.scenes.drawing` -- colours, backgrounds, relations and drawing primitives the generators share;
- :mod:`mmgen.scenes.grid` -- scenes on a 3x3 grid sampled and captioned from a specification;
- a module per generator (:data:`GENERATORS`), each with ``sample_scene(rng)`` (a scene: a JSON-able dict),
  ``scene_captions(scene)`` (five true captions) and ``draw_scene(scene, image_size, rng)`` (a PIL image);
- :mod:`mmgen.scenes.suite` -- a suite of distributions (each a generator of the same three functions) that
  vary backgrounds, palettes, scales, clutter, lighting and caption style;
- :mod:`mmgen.scenes.writer` -- a dataset of scenes as COCO caption files and images (``mmgen data synth``,
  ``data.synth``);
- :mod:`mmgen.scenes.accuracy` -- what captions get wrong, read back against the scenes' truth.
"""

GENERATORS = {
    # difficulty: (module, what its scenes hold)
    "simple": ("mmgen.scenes.simple", "one or two upright shapes"),
    "hard": ("mmgen.scenes.hard", "up to four rotated shapes on a 3x3 grid with counts, positions and relations"),
}
"""The scene generators by name (``mmgen data synth --difficulty``, ``data.synth.difficulty``): the module that
samples, captions and draws them, and a description for the command line."""


def difficulties() -> dict[str, str]:
    """Every scene generator's name (``--difficulty``): the modules of :data:`GENERATORS` and the distributions
    of :data:`mmgen.scenes.suite.SUITE`, each with what its scenes hold."""
    from mmgen.scenes.suite import SUITE

    return {**{name: what for name, (_, what) in GENERATORS.items()}, **{n: d.description for n, d in SUITE.items()}}
