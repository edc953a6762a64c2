//! `ModuleService`. The module registry is not built yet: the contract is in
//! place and every RPC answers UNIMPLEMENTED (generated default methods) until
//! the module-lifecycle work lands.

use crate::proto::automation_v1::module_service_server::ModuleService;

/// Handlers of `automation.v1.ModuleService`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ModuleApi;

#[tonic::async_trait]
impl ModuleService for ModuleApi {}
