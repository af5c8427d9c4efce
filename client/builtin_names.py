"""The built-in salience methods and measure families, for the `etm` help (written by `make openapi` from
openapi/openapi.json; a service with plugins may offer more, and the service is the judge)."""

METHODS = (
    'gradcam',
    'gradcam++',
    'integrated_gradients',
    'smoothgrad',
    'cam',
    'scorecam',
    'rise',
    'rollout',
    'gradient_rollout',
)
MEASURES = (
    'entropy',
    'noise',
    'oos_set',
    'geometry',
    'stability',
    'degradation',
    'agreement',
    'accuracy',
    'strategies',
    'sanity',
    'sparseness',
    'localisation',
    'robustness',
    'faithfulness',
)
# Run only when named: not in the default list, nor in 'all'.
OPT_IN = (
    'strategies',
    'sanity',
    'sparseness',
    'localisation',
    'robustness',
    'faithfulness',
)
