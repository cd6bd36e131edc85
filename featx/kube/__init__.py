"""Kubernetes side of featx: one Job per model, rendered from the chart's ConfigMap (which
``helm template`` renders from the chart's values) and kept level-triggered by a reconciler.

Layers (only ``client`` imports the kubernetes package; nothing here imports torch):
  helm                       the ConfigMap's run.yaml from the real `helm template`
  naming, config             names, run settings and desired artifacts (pure)
  jobs, observe, reconcile   Job manifests, reading Jobs, the decision function (pure)
  controller                 one pass: observe -> decide -> apply (the only writer)
  client                     thin adapter over the kubernetes client (the only API caller)
  sizing_table, status       `featx models --sizing`, `featx status --release`
"""
