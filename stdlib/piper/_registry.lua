-- Internal: what evaluating piper.lua defines, read by the Rust core after
-- evaluation (steps excepted: native.define_step reads each one as it is
-- defined). Arrays keep the order of definition (Lua tables do not).
return {
  ---@type { name: string, spec: table, file: string, line: integer }[]
  pipelines = {},
  ---@type table<string, string> variables set with piper.env.set for every step
  env = {},
  ---@type table<string, { shell?: string, argv?: string[] }> build stamps set with piper.env.stamp
  stamps = {},
  ---@type string[] Lua files of the project that were required (watched by `piper watch`)
  files = {},
  ---@type { paths: string[], ignore: string[] } added by trigger.watch
  watch = { paths = {}, ignore = {} },
}
