//! The `#[spindle_sdk::filter]` attribute. Use it through `spindle-sdk`, which documents it.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItem, ItemImpl, parse_macro_input};

/// The methods of `Filter` and the `Hooks` constant each hook declares (none for the others).
const HOOKS: &[(&str, Option<&str>)] = &[
    ("new", None),
    ("hooks", None),
    ("per_try_timeout", None),
    ("request_min_in_flight", None),
    ("attempt_outcomes", None),
    ("wants_path", None),
    ("on_request", Some("REQUEST")),
    ("endpoints_changed", Some("PICK")),
    ("pick_endpoint", Some("PICK")),
    ("on_attempt", Some("ATTEMPT")),
    ("on_response", Some("RESPONSE")),
    ("on_done", Some("DONE")),
];

/// Marks `impl Filter for YourType` as the component's filter: declares the hooks the block
/// defines and, on `wasm32`, exports the type. See `spindle_sdk::filter`.
#[proc_macro_attribute]
pub fn filter(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = TokenStream2::from(attr);
    if !attr.is_empty() {
        return syn::Error::new(attr.span(), "`#[spindle_sdk::filter]` takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(item as syn::Item);
    match expand(item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(item: syn::Item) -> syn::Result<TokenStream2> {
    let mut imp: ItemImpl = match item {
        syn::Item::Impl(imp) => imp,
        other => {
            return Err(syn::Error::new(
                item_span(&other),
                "`#[spindle_sdk::filter]` goes on an `impl Filter for YourType { ... }` block",
            ));
        }
    };
    let is_filter = imp
        .trait_
        .as_ref()
        .and_then(|(bang, path, _)| {
            if bang.is_some() {
                None
            } else {
                path.segments.last()
            }
        })
        .is_some_and(|seg| seg.ident == "Filter");
    if !is_filter {
        let span = match &imp.trait_ {
            Some((_, path, _)) => path.span(),
            None => imp.self_ty.span(),
        };
        return Err(syn::Error::new(
            span,
            "`#[spindle_sdk::filter]` goes on an `impl Filter for YourType` block, not on this impl",
        ));
    }
    if !imp.generics.params.is_empty() {
        return Err(syn::Error::new(
            imp.generics.span(),
            "a filter exported with `#[spindle_sdk::filter]` cannot be generic: \
             implement `Filter` for a concrete type",
        ));
    }

    let mut declared: Vec<&'static str> = Vec::new();
    let mut has_pick = false;
    let mut changed_span = None;
    for item in &imp.items {
        match item {
            ImplItem::Fn(f) => {
                let name = f.sig.ident.to_string();
                let Some((_, hook)) = HOOKS.iter().find(|(n, _)| *n == name) else {
                    let known: Vec<&str> = HOOKS.iter().map(|(n, _)| *n).collect();
                    return Err(syn::Error::new(
                        f.sig.ident.span(),
                        format!(
                            "`{name}` is not a method of `Filter`; its methods are: {}. \
                             Put helper methods in a separate `impl` block",
                            known.join(", ")
                        ),
                    ));
                };
                match name.as_str() {
                    "pick_endpoint" => has_pick = true,
                    "endpoints_changed" => changed_span = Some(f.sig.ident.span()),
                    _ => {}
                }
                if let Some(hook) = hook
                    && !declared.contains(hook)
                {
                    declared.push(hook);
                }
            }
            ImplItem::Const(c) if c.ident == "HOOKS" => {
                return Err(syn::Error::new(
                    c.ident.span(),
                    "`HOOKS` is set by `#[spindle_sdk::filter]` from the hooks you define: remove it",
                ));
            }
            _ => {}
        }
    }
    if let (Some(span), false) = (changed_span, has_pick) {
        return Err(syn::Error::new(
            span,
            "`endpoints_changed` without `pick_endpoint`: only a balancer is told about \
             endpoints, and a balancer must define `pick_endpoint`",
        ));
    }

    let hooks = declared
        .iter()
        .fold(quote!(::spindle_sdk::Hooks::NONE), |acc, hook| {
            let hook = syn::Ident::new(hook, Span::call_site());
            quote!(#acc.union(::spindle_sdk::Hooks::#hook))
        });
    imp.items.push(syn::parse_quote! {
        const HOOKS: ::spindle_sdk::Hooks = #hooks;
    });

    let self_ty = &imp.self_ty;
    let export = quote_spanned! {self_ty.span()=>
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __SpindleFilterExport = ::spindle_sdk::export::Adapter<#self_ty>;
            ::spindle_sdk::export::export!(__SpindleFilterExport with_types_in ::spindle_sdk::wit);
        };
    };
    Ok(quote! {
        #imp
        #export
    })
}

fn item_span(item: &syn::Item) -> Span {
    match item {
        syn::Item::Struct(s) => s.ident.span(),
        syn::Item::Enum(e) => e.ident.span(),
        syn::Item::Fn(f) => f.sig.ident.span(),
        syn::Item::Trait(t) => t.ident.span(),
        other => other.span(),
    }
}
