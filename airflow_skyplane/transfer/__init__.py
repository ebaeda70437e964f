"""The transfer: cutting objects into chunks (:mod:`.chunks`), the controller that runs gateways and
verifies the result (:mod:`.job`), and the store specs handed to gateways (:mod:`.stores`)."""
