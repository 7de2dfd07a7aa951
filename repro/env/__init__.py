"""The run's environment: the settings the parent gives the child (`settings`) and the
fingerprint the child takes of itself (`fingerprint`)."""
