//! Core module → component, in-process with `wit-component`.
//!
//! wit-bindgen embeds the plugin's WIT world in a custom section of the core module;
//! `ComponentEncoder` turns that into the component's imports and exports. The WASI
//! preview1 *reactor* adapter is added only when the module imports
//! `wasi_snapshot_preview1` (wasm32-wasip1 builds do, wasm32-unknown-unknown ones
//! don't). A wasm32-wasip2 build is already a component and is kept as is.

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
};
use wit_component::{ComponentEncoder, DecodedWasm};

/// What a `.wasm` file holds, from its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WasmKind {
    CoreModule,
    Component,
}

pub(crate) fn wasm_kind(bytes: &[u8]) -> Result<WasmKind> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        bail!("not a WebAssembly file (no `\\0asm` header)");
    }
    // Bytes 4..6: version, 6..8: layer (0 = core module, 1 = component).
    match u16::from_le_bytes([bytes[6], bytes[7]]) {
        0 => Ok(WasmKind::CoreModule),
        1 => Ok(WasmKind::Component),
        layer => bail!("unknown WebAssembly layer {layer}"),
    }
}

/// Whether a core module imports anything from `wasi_snapshot_preview1`.
pub(crate) fn imports_wasi_preview1(module: &[u8]) -> Result<bool> {
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        if let wasmparser::Payload::ImportSection(reader) =
            payload.context("parsing the core module")?
        {
            for import in reader.into_imports() {
                if import.context("parsing the core module's imports")?.module
                    == WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// Turns cargo's output into a component. Returns the component, how it was made (for
/// the logs: `"already a component"`, `"with the wasi preview1 reactor adapter"` or
/// `"no adapter"`) and its world. A component that exports nothing is an error: no
/// plugin world was exported (wit-bindgen's `export!` missing).
pub(crate) fn to_component(wasm: &[u8]) -> Result<(Vec<u8>, &'static str, ComponentSummary)> {
    let (component, how) = if wasm_kind(wasm)? == WasmKind::Component {
        (wasm.to_vec(), "already a component")
    } else {
        let wasi = imports_wasi_preview1(wasm)?;
        let mut encoder = ComponentEncoder::default();
        encoder.validate(true);
        encoder.module(wasm).context(
            "reading the core module's component-type section (is the crate built with wit-bindgen?)",
        )?;
        if wasi {
            encoder
                .adapter(
                    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                    WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                )
                .context("adding the wasi preview1 reactor adapter")?;
        }
        let component = encoder.encode().context("encoding the component")?;
        (
            component,
            if wasi {
                "with the wasi preview1 reactor adapter"
            } else {
                "no adapter"
            },
        )
    };
    let summary = component_summary(&component)?;
    if summary.exports.is_empty() {
        bail!(
            "the component exports nothing: the crate must generate a Sluice plugin world with \
             wit-bindgen (or the plugin SDK) and export it (`export!`)"
        );
    }
    Ok((component, how, summary))
}

/// A component's imports and exports, as seen from outside (`sluice:plugin/log@0.1.0`,
/// `wasi:cli/environment@0.2.x`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentSummary {
    pub imports: Vec<String>,
    pub exports: Vec<String>,
}

/// Decodes a component's world: what it imports and exports.
pub fn component_summary(component: &[u8]) -> Result<ComponentSummary> {
    match wit_component::decode(component).context("decoding the component")? {
        DecodedWasm::Component(resolve, world) => {
            let w = &resolve.worlds[world];
            Ok(ComponentSummary {
                imports: w
                    .imports
                    .keys()
                    .map(|k| resolve.name_world_key(k))
                    .collect(),
                exports: w
                    .exports
                    .keys()
                    .map(|k| resolve.name_world_key(k))
                    .collect(),
            })
        }
        DecodedWasm::WitPackage(..) => bail!("this is a WIT package, not a component"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_kinds() {
        assert_eq!(wasm_kind(b"\0asm\x01\0\0\0").unwrap(), WasmKind::CoreModule);
        assert_eq!(
            wasm_kind(b"\0asm\x0d\0\x01\0").unwrap(),
            WasmKind::Component
        );
        assert!(wasm_kind(b"\x7fELF\x02\x01\x01\0").is_err());
        assert!(wasm_kind(b"\0asm").is_err());
    }

    #[test]
    fn detects_wasi_imports() {
        // (module (import "wasi_snapshot_preview1" "proc_exit" (func (param i32))))
        let with = [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // header
            0x01, 0x05, 0x01, 0x60, 0x01, 0x7f, 0x00, // type section: (func (param i32))
            0x02, 0x24, 0x01, 0x16, // import section, 1 import, module name len 22
        ];
        let mut m = with.to_vec();
        m.extend_from_slice(b"wasi_snapshot_preview1");
        m.push(9);
        m.extend_from_slice(b"proc_exit");
        m.extend_from_slice(&[0x00, 0x00]);
        assert!(imports_wasi_preview1(&m).unwrap());
        assert!(!imports_wasi_preview1(b"\0asm\x01\0\0\0").unwrap());
    }

    #[test]
    fn a_module_without_a_world_is_refused() {
        let err = to_component(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(err.contains("exports nothing"), "{err}");
    }
}
