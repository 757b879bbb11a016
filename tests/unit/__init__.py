"""Pure logic, no model: SAV maths, calibration, policy parsing, readers, the house rules."""
