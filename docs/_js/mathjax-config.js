// MathJax 3 settings. The script itself is bundled with the site (docs/_mkdocs/hooks.py copies
// it from the django-static-mathjax package): no CDN, so the maths renders offline.
// Pages: pymdownx.arithmatex (generic mode) wraps maths as \(...\) and \[...\] in elements of
// class "arithmatex". Notebook pages (mkdocs-jupyter) keep the notebooks' $...$ and $$...$$ in
// their Markdown cells (class "jp-MarkdownOutput"). Nothing else on a page is typeset: an
// element with any other class is skipped with all it holds, while an element with no class
// (the <p> of a notebook cell) follows its parent. (".*|" would also skip those <p>.)
window.MathJax = {
  tex: {inlineMath: [["\\(", "\\)"], ["$", "$"]], displayMath: [["\\[", "\\]"], ["$$", "$$"]],
        processEscapes: true, processEnvironments: true},
  options: {ignoreHtmlClass: ".+", processHtmlClass: "arithmatex|jp-MarkdownOutput"}
};
document$.subscribe(() => { MathJax.typesetPromise && MathJax.typesetPromise(); });
