"""First-boot enrolment, device side (`watchpost enrol`): see `appliance.enrol.device`."""
