"""Classic (pre-transformer) systems for the application tasks, one module per job.

Each module defines ``Baseline`` objects (``lmforge.eval.baselines``) that the eval stage runs beside
the model on the same documents, scored by the same code: ``qa`` (SQuAD, BoolQ), ``summarize``,
``translate``, ``code``; ``ner`` holds the lookup and CRF taggers that ``finetune.ner`` reports beside
its model, and ``bm25`` the ranking ``finetune.contrastive`` reports beside its embeddings.
Heavy libraries (scikit-learn, networkx, sklearn-crfsuite) are imported inside the functions.
"""
