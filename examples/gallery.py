"""Make the committed gallery in figures/ with one command.

Runs the picture examples at modest sizes and writes their PNGs (and one small GIF) into
``--out`` (default ``figures/``) at the examples' default of 150 dpi (sharp on a projector and
in print; tests/test_viz.py checks that every PNG in figures/ has at least 120), plus the
explorer's snapshot ``explore.png`` (1024 x 768).

    python examples/gallery.py                 # about 4 minutes CPU (the examples' sum)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))

#: example -> extra arguments for the gallery
GALLERY = {
    "shadowing": [],
    "linear_noise": ["--chains", "4000"],
    "phase_portrait": [],
    "ode_vs_sgd": [],
    "compare_rules": [],
    "batch_clipping": [],
    "exploding": [],
    "animation": ["--frames", "24", "--grid", "21", "--dpi", "80"],   # a small GIF
    "equilibria_basins": [],
    "clipping_bias": [],
    "fluctuations": [],
    "quartic_l0l1": [],
    "azuma_stability": [],
    "explore": ["--dpi", "150"],            # sa-clip explore --snapshot, 1536 x 1152 px
}


def _explore_main(argv: list[str]) -> str:
    """``sa-clip explore --snapshot OUT/explore.png`` (the explorer is not an example file)."""
    from sa_clip.viz import explore

    out = argv[argv.index("--out") + 1]
    path = os.path.join(out, "explore.png")
    rest = [a for i, a in enumerate(argv) if a != "--out" and (i == 0 or argv[i - 1] != "--out")]
    ap = explore.add_arguments(argparse.ArgumentParser())
    explore.main(ap.parse_args([*rest, "--snapshot", path]))
    return path


def load(name: str):
    if name == "explore":
        return argparse.Namespace(main=_explore_main)
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.normpath(os.path.join(HERE, "..", "figures")))
    ap.add_argument("--only", nargs="*", choices=sorted(GALLERY), help="a subset")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (for the smoke test)")
    return ap.parse_args(argv)


TINY = {
    "shadowing": ["--steps", "80", "--chains", "3", "--starts", "3", "--horizon", "0.5",
                  "--record-every", "2"],
    "linear_noise": ["--chains", "50", "--steps", "40", "--switch-steps", "40"],
    "phase_portrait": ["--steps", "20", "--chains", "3", "--grid", "9"],
    "ode_vs_sgd": ["--steps", "30", "--chains", "3", "--record-every", "5"],
    "compare_rules": ["--steps", "30", "--chains", "3", "--record-every", "5"],
    "batch_clipping": ["--n", "16", "--samples", "20"],
    "exploding": ["--steps", "10", "--chains", "4"],
    "animation": ["--steps", "10", "--chains", "4", "--frames", "3", "--grid", "7"],
    "equilibria_basins": ["--grid", "6", "--starts", "6", "--horizon", "5"],
    "clipping_bias": ["--lams", "1", "5"],
    "fluctuations": ["--chains", "50", "--steps", "40"],
    "quartic_l0l1": ["--starts", "1.5", "12", "--steps", "150"],
    "azuma_stability": ["--chains", "200", "--steps", "30", "--blowup-chains", "20",
                        "--blowup-steps", "20", "--lams", "1", "32"],
    "explore": ["--quick", "--chains", "4", "--steps", "20", "--size", "640x480"],
}


def main(argv: list[str] | None = None) -> list[str]:
    args = parse(argv)
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for name in args.only or GALLERY:
        t = time.perf_counter()
        extra = TINY[name] if args.tiny else GALLERY[name]
        out = load(name).main([*extra, "--out", args.out])
        written += out if isinstance(out, list) else [out] if isinstance(out, str) else []
        print(f"== {name}: {time.perf_counter() - t:.0f} s")
    return written


if __name__ == "__main__":
    main()
