"""The method: SAV's head scoring and classifiers, calibration, and the compiled artifact they make."""
