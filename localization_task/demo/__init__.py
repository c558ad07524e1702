"""The localization demo: synthetic data, a tiny random-init encoder, and the settings that train on them."""
