module katalyst.local/workload

go 1.26
