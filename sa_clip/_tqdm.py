"""``tqdm.auto``'s bar (a widget in Jupyter, text elsewhere) without the ``TqdmWarning``
"IProgress not found" that importing it prints in a Jupyter kernel lacking ipywidgets: there it
falls back to the text bar, which is all sa_clip needs, so the warning is only noise on the
first cell of every notebook."""

import warnings

from tqdm import TqdmWarning

with warnings.catch_warnings():
    warnings.simplefilter("ignore", TqdmWarning)
    from tqdm.auto import tqdm

__all__ = ["tqdm"]
