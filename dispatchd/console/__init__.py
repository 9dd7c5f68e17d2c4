"""The operator console: a Textual client of the daemon's control socket.

Nothing in this package opens the database or imports the daemon's store, worker or
service: everything it shows and does goes through the control protocol
(`dispatchd.control.protocol`, served by `dispatchd.control.server`).
"""
