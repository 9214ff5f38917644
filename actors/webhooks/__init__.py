"""Outgoing webhooks (Standard Webhooks 1.0): signing, the retry schedule, the safety of
a target, the endpoint store and the delivery loop. Pure modules; the actor that runs
the loop is a thin shell over ``delivery``."""
