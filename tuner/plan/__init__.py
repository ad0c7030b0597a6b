"""Pure planning on `tuner.core` objects: the cost model, accelerate's strategies, the exact
optimum, the Optuna search and the diagnosis of why nothing fits. No measurement, no storage."""
