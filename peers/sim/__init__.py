"""``gauntlet simulate``: a whole network on one machine (lockstep or live), its summary and report."""
