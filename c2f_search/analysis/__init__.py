"""Results, without Ray: a search's rows (``rows``), Pareto fronts and the paper's Table 2/3 (``pareto``),
``confirm``'s seed analysis (``seeds``) and proxy-to-target transfer (``transfer``), the HTML report
(``report``) and the one number formatting (``formatting``)."""
