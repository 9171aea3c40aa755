"""Release control: what moves traffic over time on its own clock, deciding through the pure core and writing
through the store's precondition, so that several replicas never disagree (the stepped promotion's timer, the
automatic rollback), and the live figures and drained signal they and /state read.
"""
