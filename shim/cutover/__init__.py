"""The cutover: the flag state and its policy (`flag_state`, `flags`, `flag_view`), the
store interface (`store`) and its two implementations (`file_store`; `etcd`, `etcd_store`,
`etcd_fleet`), who serves what (`workers`), the parity gate, the guard's automatic
rollback, the canary split and the fallback rule. Imports the vocabulary and parity only."""
