"""Region-wave rollouts (DESIGN §6): version weights, plans and analysis.

- ``model``: routing weights per (service, region, version), sticky version
  choice, and rollout plans checked field by field (pure);
- ``analysis``: Argo Rollouts' three-way outcome from the agents' own
  metrics, new version against the stable one at the same time (pure).

The controller, its lease and the weights' store come next (issue 17).
"""
