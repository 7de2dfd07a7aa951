"""How many jobs run at once and where: the `Executor` protocol and `LocalExecutor`
(`executor`), Ray (`rayexec`, the only module that imports ray) and the parcels that ship a
spec's project to a node (`parcel`); `factory.make_executor` picks one for `--engine`."""
