"""Media messages: what a file may be (``kinds``) and where its bytes live (``store``)."""
