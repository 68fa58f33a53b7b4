"""The task queue: one transition path (``transitions``), one set of statements
(``statements``), one implementation of claim/start/complete (``ops``) run by either executor
(``executors``)."""
