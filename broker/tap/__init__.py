"""The IVOA TAP service's parts that need no web framework: TAP_SCHEMA (`broker.tap.tapschema`)."""
