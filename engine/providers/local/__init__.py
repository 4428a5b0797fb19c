"""The embedded local backend (provider `local`): Azure ML's endpoint rules on one machine.

`provider.LocalProvider` is the engine's entry point; `store` holds the control plane,
`server` the data plane and its `worker` processes, `requestlog` and `source` the gate data.
Nothing is imported here, so naming the package stays cheap for commands that never serve.
"""
