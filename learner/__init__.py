"""The A2C algorithm: config, policy, GAE, loss, the Learner actor and the checkpoint format.

Nothing here knows about HTTP, jobs or Ray placement; `service/` wires it up.
"""
