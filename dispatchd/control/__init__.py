"""The operator control socket and the protocol it shares with the console."""
