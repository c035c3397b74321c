"""Online alignment of the drafter to the target from verification feedback.

``head_aligner`` (sparse head rows, optional final norm, curriculum, rollback), ``background``
(its updates on a worker thread), ``online_distill`` (the dense whole-drafter baseline ``osd``),
``feedback`` (what the generator hands over and what comes back for the engines), ``methods``
(the named methods and ``make_aligner``).
"""
