# session 25, call 3: the command given to the device tool (one line there), same warm machine. The report
# gemm.ncu-rep (25 MB) and gemm_details.csv (0.6 MB) not kept: gemm.md and gemm_source.md are made from them
# (tools/device_env.sh: ncu_gemm)
QVIT_ENV_NO_INSTALL=1 . tools/device_env.sh; mkdir -p $OUT/r; export TRITON_CACHE_AUTOTUNING=1 QVIT_PDL=0
linear_m197 linear3 60; ncu_gemm 14:1,13:1,23:1 300; cd $OUT && tar czf r3.tgz r && rm -rf r
